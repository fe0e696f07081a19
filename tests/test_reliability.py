"""Faults: corrupted or foreign checkpoints, NaN losses, Ctrl-C. Each keeps the last checkpoint loadable."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import as_dataset, defaults_config, tiny_batch, tiny_config, training_args
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageClassification
from transformers.trainer_utils import get_last_checkpoint

from sal_hf import SALConfig, SALForImageClassification, SALModel, SALTrainer


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def saved(tmp_path):
    model = SALForImageClassification(tiny_config())
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_truncated_weights_raise_an_error_naming_the_file(saved):
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for load in (AutoModelForImageClassification.from_pretrained, SALForImageClassification.from_pretrained):
        with pytest.raises(OSError, match=f"{weights}.*truncated or corrupted"):
            load(saved)


@pytest.mark.parametrize("cls", [SALConfig, SALModel, SALForImageClassification])
def test_a_config_of_another_model_type_raises_naming_the_file(saved, cls):
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**config, "model_type": "vit"}))
    with pytest.raises(ValueError, match=f"{saved / 'config.json'} has model_type='vit', not 'sal'"):
        cls.from_pretrained(saved)


@pytest.mark.parametrize("change", [{"num_areas": 8}, {"output_areas": True}, {"hidden_sizes": [32, 16]}])
def test_weights_that_do_not_fit_the_config_raise(saved, change):
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match=str(saved)):
        SALForImageClassification.from_pretrained(saved)


@pytest.mark.parametrize(
    "change",
    [
        {"dual_path": False},
        {"num_areas": 1, "output_areas": False},
        {"output_areas": False},
        {"norm": "none"},
        {"hidden_sizes": [32]},
    ],
)
def test_a_config_of_a_smaller_model_does_not_drop_saved_weights(change, tmp_path):
    """Weights the config has no place for were dropped silently (only transformers' load report said UNEXPECTED):
    the model loaded was another, smaller one."""
    SALForImageClassification(defaults_config(output_areas=True, norm="layernorm")).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match=f"{tmp_path} holds .* weights this model has no place for.*config.json"):
        SALForImageClassification.from_pretrained(tmp_path, dtype=torch.float32)  # a loading kwarg is not blamed
    (tmp_path / "config.json").write_text(json.dumps(config))
    if len(change) == 1:  # the same change as an override (two are applied one by one, and refused on the way)
        with pytest.raises(ValueError, match=f"no place for.*this call sets {next(iter(change))}="):
            SALForImageClassification.from_pretrained(tmp_path, **change)


def test_a_transformer_loaded_with_fewer_blocks_is_refused_and_other_heads_still_load(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from sal_hf import SALTransformerConfig, SALTransformerForCausalLM, SALTransformerModel

    size = dict(vocab_size=32, hidden_size=16, num_attention_heads=2, max_position_embeddings=16)
    SALTransformerForCausalLM(SALTransformerConfig(**size, num_hidden_layers=3)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model.layers.2.* this call sets num_hidden_layers=2"):
        SALTransformerForCausalLM.from_pretrained(tmp_path, num_hidden_layers=2)
    # An LM's head is not the body's or a classifier's: those load without it.
    assert len(SALTransformerModel.from_pretrained(tmp_path).layers) == 3
    AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=2)


def test_a_body_checkpoint_loads_for_classification_with_a_fresh_head(tmp_path):
    """A `SALModel` checkpoint (no head) loads into `SALForImageClassification` / `AutoModelForImageClassification`
    with a new output layer, as transformers' task models load a body (it raised that weights were missing); a
    classifier checkpoint whose head was deleted still raises."""
    body = SALModel(defaults_config())
    body.save_pretrained(tmp_path / "body")
    for cls in (SALForImageClassification, AutoModelForImageClassification):
        model = cls.from_pretrained(tmp_path / "body", num_labels=3).eval()
        x = torch.rand(2, 16)
        assert torch.equal(model.sal(x).last_hidden_state, body.eval()(x).last_hidden_state)
        assert model.config.num_labels == 3 and model(pixel_values=x).logits.shape == (2, 3)
    SALForImageClassification(defaults_config()).save_pretrained(tmp_path / "classifier")
    weights = load_file(tmp_path / "classifier" / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("classifier.")},
        tmp_path / "classifier" / "model.safetensors",
        metadata={"format": "pt"},
    )
    with pytest.raises(ValueError, match="lacks"):
        SALForImageClassification.from_pretrained(tmp_path / "classifier")


def test_a_bp_checkpoint_loads_for_sal_with_regenerated_feedback(tmp_path):
    SALForImageClassification(tiny_config(learning_rule="bp")).save_pretrained(tmp_path)
    model = SALForImageClassification.from_pretrained(tmp_path, learning_rule="sal")
    assert model.config.feedback_mode == "direct"
    assert torch.equal(model.feedback.layer_0, SALForImageClassification(tiny_config()).feedback.layer_0)


def test_nan_loss_stops_training_and_the_last_checkpoint_stays_loadable(tmp_path):
    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config())
    x, y = tiny_batch(64)
    x[40:48] = float("inf")  # the sixth batch of 8 in sequential order
    args = training_args(
        tmp_path,
        per_device_train_batch_size=8,
        save_strategy="steps",
        save_steps=2,
        train_sampling_strategy="sequential",
    )
    trainer = SALTrainer(model=model, args=args, train_dataset=as_dataset(x, y))
    with pytest.raises(
        FloatingPointError,
        match="Training loss is nan at step 6 .*no checkpoint is written.*weights after step 5 .*checkpoint saved at step 5",
    ):
        trainer.train()
    last = get_last_checkpoint(args.output_dir)
    assert last.endswith("checkpoint-4")
    again = SALForImageClassification.from_pretrained(last)
    assert all(torch.isfinite(p).all() for p in again.parameters())
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN step changed nothing


INTERRUPTIBLE = """
import sys, time, torch
sys.path.insert(0, {tests!r})
from transformers import TrainerCallback
from conftest import as_dataset, defaults_config, tiny_batch, tiny_config, training_args
from pathlib import Path
from sal_hf import SALForImageClassification, SALTrainer

class Slow(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(0.05)
        print("step", state.global_step, flush=True)

x, y = tiny_batch(64)
args = training_args(Path({out!r}), max_steps=100000, save_strategy="steps", save_steps=5, logging_steps=1000)
trainer = SALTrainer(model=SALForImageClassification(tiny_config()), args=args, train_dataset=as_dataset(x, y), callbacks=[Slow()])
trainer.train()
print("stopped at", trainer.state.global_step, flush=True)
"""


def test_sigint_saves_a_checkpoint_and_stops_cleanly(tmp_path):
    code = INTERRUPTIBLE.format(tests=str(ROOT / "tests"), out=str(tmp_path))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while get_last_checkpoint_or_none(tmp_path / "out") is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    stopped = int(stdout.split("stopped at")[-1])
    last = get_last_checkpoint(str(tmp_path / "out"))
    assert last.endswith(f"checkpoint-{stopped}"), (last, stopped)  # the interrupt saved where it stopped
    state = json.loads((Path(last) / "trainer_state.json").read_text())
    assert state["global_step"] == stopped
    again = SALForImageClassification.from_pretrained(last)
    assert all(torch.isfinite(p).all() for p in again.parameters())


def get_last_checkpoint_or_none(folder: Path):
    return get_last_checkpoint(str(folder)) if folder.exists() else None


def test_load_best_model_at_end_restores_the_best_checkpoints_weights_and_routing_state(tmp_path):
    """Trainer's `load_best_model_at_end` with the shipped defaults: the model after `train()` is the best
    checkpoint's, routers' running statistics and feedback included, and evaluates as it did then. The "best" here
    is the highest validation loss, so that it is an early checkpoint, not the last one."""
    torch.manual_seed(0)
    model = SALForImageClassification(defaults_config())
    x, y = tiny_batch(64)
    args = training_args(
        tmp_path,
        num_train_epochs=3,
        per_device_train_batch_size=32,
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=True,
        logging_steps=100,
    )
    trainer = SALTrainer(model=model, args=args, train_dataset=as_dataset(x, y), eval_dataset=as_dataset(x, y))
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best != get_last_checkpoint(args.output_dir)
    saved = SALForImageClassification.from_pretrained(best).state_dict()
    now = model.state_dict()
    assert sorted(saved) == sorted(now) and any(".router." in name for name in now)
    assert all(torch.equal(now[name], saved[name]) for name in now)
    logged = max(log["eval_loss"] for log in trainer.state.log_history if "eval_loss" in log)
    assert trainer.evaluate()["eval_loss"] == pytest.approx(logged, rel=1e-6)
