"""Faults around the training loop and the inputs, each found in a close read (2026-11-30, docs/RELIABILITY.md) and
tested on SALConfig's shipped defaults: what a failed `train()` leaves behind, trials of `hyperparameter_search`,
tuple outputs, label dtypes, NaN in the config, the order of callbacks and PIL image modes."""

import math
import re
import signal

import numpy as np
import pytest
import torch
from conftest import DEFAULTS, as_dataset, tiny_batch, training_args
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from sal_hf import SALConfig, SALForImageClassification, SALImageProcessor, SALTrainer, SALTransformerConfig
from sal_hf.activations import ACTIVATIONS


def shipped(seed: int = 0, **overrides) -> SALForImageClassification:
    torch.manual_seed(seed)
    return SALForImageClassification(SALConfig(**{**DEFAULTS, **overrides}))


def routing_state(model) -> dict[str, torch.Tensor]:
    return {name: b.clone() for name, b in model.named_buffers() if "router" in name}


# ------------------------------------------------------------------------------------------- a failed train()


def test_a_nan_batch_leaves_no_routing_sums_for_the_next_train(tmp_path):
    """The forward of a NaN batch gathered its routing sums; the step never came. The next `train()` on the same model
    applied them at its first step: a NaN input mean, and a NaN loss on clean data."""
    model = shipped()
    x, y = tiny_batch(32)
    bad = x.clone()
    bad[5] = math.nan
    args = training_args(tmp_path, per_device_train_batch_size=32)
    before = routing_state(model)
    with pytest.raises(FloatingPointError):
        SALTrainer(model=model, args=args, train_dataset=as_dataset(bad, y)).train()
    assert all(torch.equal(before[name], b) for name, b in routing_state(model).items())  # nothing applied
    assert all(not router.pending_load.any() for router in model.routers)  # and nothing left to apply
    SALTrainer(model=model, args=training_args(tmp_path, num_train_epochs=2), train_dataset=as_dataset(x, y)).train()
    assert all(torch.isfinite(b).all() for b in routing_state(model).values())


def test_the_ctrl_c_handler_does_not_outlive_a_train_that_raised(tmp_path):
    x, y = tiny_batch(32)
    x[3] = math.nan
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(FloatingPointError):
        SALTrainer(model=shipped(), args=training_args(tmp_path), train_dataset=as_dataset(x, y)).train()
    assert signal.getsignal(signal.SIGINT) is before


# ------------------------------------------------------------------------------------------------- model_init


def test_each_model_init_trial_trains_with_its_own_configs_rule(tmp_path):
    """`train()` builds a new model through `model_init`; the local rule was the first model's (ReLU's derivative
    for a tanh trial)."""
    acts = iter(["relu", "tanh"])
    trainer = SALTrainer(
        model_init=lambda trial=None: shipped(hidden_act=next(acts), feedback_decay=0.1),
        args=training_args(tmp_path, max_steps=1),
        train_dataset=as_dataset(*tiny_batch(16)),
    )
    assert trainer.learning_rule.activation is ACTIVATIONS["relu"]  # the first model's (Trainer builds it once)
    trainer.train()
    assert trainer.model.config.hidden_act == "tanh"
    assert trainer.learning_rule.activation is ACTIVATIONS["tanh"] and trainer.learning_rule.feedback_decay == 0.1


# ------------------------------------------------------------------------------------------------------ outputs


def test_local_training_with_return_dict_false(tmp_path):
    model = shipped(return_dict=False)
    assert isinstance(model(pixel_values=tiny_batch(4)[0]), tuple)
    SALTrainer(
        model=model, args=training_args(tmp_path, max_steps=2), train_dataset=as_dataset(*tiny_batch(32))
    ).train()


def test_a_users_step_end_callback_sees_the_routing_of_the_step(tmp_path):
    class Snapshot(TrainerCallback):
        seen: list[tuple[int, int]] = []

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.seen.append((state.global_step, int(model.routers[0].num_updates)))

    trainer = SALTrainer(
        model=shipped(),
        args=training_args(tmp_path, max_steps=3),
        train_dataset=as_dataset(*tiny_batch(48)),
        callbacks=[Snapshot],  # before SALTrainer's own in the list Trainer builds
    )
    trainer.train()
    assert Snapshot.seen == [(1, 1), (2, 2), (3, 3)]


# ------------------------------------------------------------------------------------------------------- labels


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_any_integer_label_dtype_trains_locally(dtype, tmp_path):
    x, y = tiny_batch(32)
    rows = [{"pixel_values": xi, "labels": yi.to(dtype)} for xi, yi in zip(x, y)]
    model = shipped()
    assert model(pixel_values=x, labels=y.to(dtype)).loss == model(pixel_values=x, labels=y).loss
    SALTrainer(model=model, args=training_args(tmp_path, max_steps=2), train_dataset=rows).train()


def test_bad_labels_and_inputs_are_named_before_anything_runs():
    model = shipped().eval()
    x, y = tiny_batch(4)
    with pytest.raises(ValueError, match=r"integer class ids of shape \(4,\); got shape \(4,\), dtype torch.bool"):
        model(pixel_values=x, labels=y > 2)
    with pytest.raises(ValueError, match="empty batch"):
        model(pixel_values=x[:0], labels=y[:0])
    with pytest.raises(TypeError, match="pixel_values must be a torch.Tensor; got list"):
        model(pixel_values=x.tolist(), labels=y)


@pytest.mark.parametrize(
    "field", ["routing_balance_rate", "routing_loss_weight", "area_lr_scale", "router_lr_scale", "feedback_decay"]
)
@pytest.mark.parametrize("value", [math.nan, math.inf, True])
def test_the_config_refuses_nan_inf_and_bools_in_its_rates(field, value):
    with pytest.raises(ValueError, match=f"SALConfig.{field} must be a finite number"):
        SALConfig(**DEFAULTS, **{field: value})
    with pytest.raises(ValueError, match=f"SALTransformerConfig.{field} must be a finite number"):
        SALTransformerConfig(**{field: value})


def test_a_bool_centre_momentum_is_refused():
    for config in (lambda **kw: SALConfig(**DEFAULTS, **kw), SALTransformerConfig):
        with pytest.raises(ValueError, match="routing_center_momentum must be in"):
            config(routing_center_momentum=True)


# ------------------------------------------------------------------------------------------------------- images


@pytest.mark.parametrize("mode", ["LA", "P", "1", "RGBA", "RGB", "L", "CMYK", "YCbCr", "HSV", "I;16"])
def test_every_pil_mode_becomes_the_luminance_pil_gives(mode):
    """Palette images gave their palette indices, 1-bit images 0/1 before the 1/255 rescale, gray + alpha two
    channels (and the model refused the input size); CMYK (common in JPEGs), YCbCr, HSV and LAB channels were read
    as R, G, B (0.16-0.30 off) and 16-bit gray crashed."""
    from PIL import Image

    colours = (np.random.default_rng(0).random((8, 8, 3)) * 255).astype("uint8")
    image = Image.fromarray(colours).convert(mode)
    pixels = SALImageProcessor(size={"height": 8, "width": 8})(image, return_tensors="pt")["pixel_values"]
    expected = np.asarray(image.convert("L"), dtype=np.float64) / 255
    assert pixels.shape == (1, 1, 8, 8)
    np.testing.assert_allclose(pixels[0, 0].double().numpy(), expected, atol=1e-6)


@pytest.mark.parametrize(
    "fields, says",
    [
        ({"router": "random", "router_lr_scale": 0.1}, "router_lr_scale=0.1 has no effect: router='random'"),
        ({"feedback_alignment": "fixed", "feedback_decay": 0.1}, "feedback_decay=0.1 has no effect"),
        ({"learning_rule": "bp", "routing_loss_weight": 0.5}, "routing_loss_weight=0.5 has no effect"),
        ({"residual": True, "hidden_sizes": [32]}, "residual=True has no effect with one hidden layer"),
        # Found in review: these were silent.
        ({"residual_scale": 0.5}, "residual_scale=0.5 has no effect: residual=False"),
        ({"router": "random", "routing_loss_weight": 5.0}, "routing_loss_weight=5.0 has no effect: router='random'"),
        (
            {"router": "claim", "routing_scope": "shared", "routing_dim": 8},
            "routing_dim=8 has no effect: router='claim'",
        ),
        ({"num_areas": 1, "area_lr_scale": 4.0}, "area_lr_scale=4.0 has no effect: num_areas=1"),
    ],
)
def test_a_setting_the_rest_of_the_config_ignores_is_named(fields, says, caplog):
    """Valid but without effect: a warning naming it (the claim fields and a bp feedback_gain are refused instead)."""
    with caplog.at_level("WARNING"):
        config = SALConfig(**{**DEFAULTS, **fields})
    assert says in caplog.text and config.ignored_settings()
    caplog.clear()
    with caplog.at_level("WARNING"):
        SALConfig(**DEFAULTS)  # the defaults, and a saved config of them, say nothing
    assert "has no effect" not in caplog.text and SALConfig(**DEFAULTS).ignored_settings() == []


def test_a_plain_trainer_on_a_local_rule_model_is_told_it_trains_by_backprop(tmp_path, caplog):
    """A plain `transformers.Trainer` (or TRL, or a hand-written loop) calls `model(**batch)` and backpropagates the
    loss: with the shipped defaults that trains every layer by backprop and never applies the routing statistics.
    It was silent; now the model says so once, and the routers after `unapplied_warning` forwards. SALTrainer, with
    the same defaults, says neither."""
    import warnings

    from transformers import Trainer

    x, y = tiny_batch(64)
    data = as_dataset(x, y)
    for trainer_class, expected in ((Trainer, True), (SALTrainer, False)):
        torch.manual_seed(0)
        model = SALForImageClassification(SALConfig(**DEFAULTS))
        for router in model.routers:
            router.unapplied_warning = 3
        caplog.clear()
        args = training_args(tmp_path, max_steps=4, per_device_train_batch_size=16)
        with warnings.catch_warnings(record=True) as caught, caplog.at_level("WARNING"):
            warnings.simplefilter("always")
            trainer_class(model=model, args=args, train_dataset=data).train()
        said = caplog.text.count("trains every layer by backpropagation")
        stale = [w for w in caught if "routing statistics were last applied" in str(w.message)]
        if expected:
            assert said == 1 and len(stale) == len(model.routers)
        else:
            assert said == 0 and not stale
    model.train()(pixel_values=x[:4], labels=y[:4], local=True)  # the local forward SALTrainer runs: no warning
    with torch.no_grad():
        model(pixel_values=x[:4], labels=y[:4])  # no gradient: nothing to warn about either
    assert "trains every layer by backpropagation" not in caplog.text


@pytest.mark.parametrize(
    "other, named",
    [
        ({"hidden_sizes": [32, 32, 32]}, "hidden_sizes=[32, 32] (this model: [32, 32, 32])"),
        ({"num_areas": 4}, "num_areas=16 (this model: 4)"),
        ({"dual_path": False}, "dual_path=True (this model: False)"),
    ],
)
def test_resuming_another_architecture_is_refused_before_any_weight_loads(other, named, tmp_path):
    """Only the lr multipliers were compared: another depth or dual_path reached torch's optimizer error after
    Trainer's non-strict load had overwritten part of the model; another K a raw size-mismatch RuntimeError."""
    x, y = tiny_batch(16)
    torch.manual_seed(0)
    args = training_args(tmp_path, max_steps=2, per_device_train_batch_size=8, save_strategy="steps", save_steps=2)
    SALTrainer(
        model=SALForImageClassification(SALConfig(**DEFAULTS)), args=args, train_dataset=as_dataset(x, y)
    ).train()
    model = SALForImageClassification(SALConfig(**{**DEFAULTS, **other}))
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    mine = torch.optim.SGD(model.parameters(), lr=0.1)  # checked with an optimizer of your own too
    for optimizers in ((None, None), (mine, None)):
        trainer = SALTrainer(model=model, args=training_args(tmp_path, max_steps=4), optimizers=optimizers)
        with pytest.raises(ValueError, match=re.escape(named) + ".*from_pretrained\\(checkpoint\\)"):
            trainer.train(resume_from_checkpoint=True)
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


def test_resuming_a_transformer_of_another_depth_is_refused(tmp_path):
    from sal_hf import SALTransformerForCausalLM

    size = dict(vocab_size=32, hidden_size=16, num_attention_heads=2, max_position_embeddings=16)
    rows = [{"input_ids": torch.randint(0, 32, (8,)), "labels": torch.randint(0, 32, (8,))} for _ in range(8)]
    args = training_args(tmp_path, max_steps=1, per_device_train_batch_size=4, save_strategy="steps", save_steps=1)
    trained = SALTransformerForCausalLM(SALTransformerConfig(**size, num_hidden_layers=2))
    SALTrainer(model=trained, args=args, train_dataset=rows).train()
    deeper = SALTransformerForCausalLM(SALTransformerConfig(**size, num_hidden_layers=3))
    trainer = SALTrainer(model=deeper, args=training_args(tmp_path, max_steps=2), train_dataset=rows)
    with pytest.raises(ValueError, match=r"tensors of this model the checkpoint lacks.*num_hidden_layers=2 \(this"):
        trainer.train(resume_from_checkpoint=True)
    same = SALTransformerForCausalLM(SALTransformerConfig(**size, num_hidden_layers=2))
    SALTrainer(model=same, args=training_args(tmp_path, max_steps=2), train_dataset=rows).train(
        resume_from_checkpoint=True
    )
    # A tied head is not in the file (no false alarm); an untied one that is missing is named.
    tied = dict(size, num_hidden_layers=2, learning_rule="bp", tie_word_embeddings=True)
    args = training_args(
        tmp_path / "tied", max_steps=1, per_device_train_batch_size=4, save_strategy="steps", save_steps=1
    )
    SALTrainer(model=SALTransformerForCausalLM(SALTransformerConfig(**tied)), args=args, train_dataset=rows).train()
    again = SALTransformerForCausalLM(SALTransformerConfig(**tied))
    args = training_args(tmp_path / "tied", max_steps=2)
    SALTrainer(model=again, args=args, train_dataset=rows).train(resume_from_checkpoint=True)
    checkpoint = tmp_path / "out" / "checkpoint-1"
    weights = load_file(checkpoint / "model.safetensors")
    del weights["lm_head.weight"]
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    untied = SALTransformerForCausalLM(SALTransformerConfig(**size, num_hidden_layers=2))
    trainer = SALTrainer(model=untied, args=training_args(tmp_path, max_steps=2), train_dataset=rows)
    with pytest.raises(ValueError, match=r"tensors of this model the checkpoint lacks, e.g. \['lm_head.weight'\]"):
        trainer.train(resume_from_checkpoint=str(checkpoint))
