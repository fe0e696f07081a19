"""Three defects found in a close read, each with the test that failed before its fix (docs/RELIABILITY.md):
padding selected areas, router statistics followed a bf16 cast, and the transformer's `from_pretrained` loaded a
checkpoint that lacks weights."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config, training_args
from ddp_transformer_worker import parse_fields
from safetensors.torch import load_file, save_file
from test_distributed import free_port
from test_transformer import TINY, lm, one_thread, tiny, token_batch  # noqa: F401 (one_thread: autouse fixture)
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from sal_hf import (
    SALForImageClassification,
    SALTrainer,
    SALTransformerConfig,
    SALTransformerForCausalLM,
    SALTransformerForSequenceClassification,
)
from sal_hf.areas import SALAreaLinear


# One sequence of 6 real tokens and 10 padding tokens. With these seeds (the models' 0, the tokens' 0) and this pad
# id, padding routes to an area no real token selects in every area layer, padded on either side (the tests assert
# it: the precondition, so that they cannot pass vacuously).
LENGTH, REAL, PAD = 16, 6, 2
PROMPT = 10  # the prompt's tokens, labelled -100 in the fine-tuning test


def padded(side: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of one sequence, (1, LENGTH): REAL tokens, padded on ``side`` with PAD."""
    real = token_batch(1, length=REAL, seed=seed)
    pad = torch.full((1, LENGTH - REAL), PAD, dtype=torch.long)
    ids = torch.cat([real, pad] if side == "right" else [pad, real], dim=1)
    mask = torch.zeros_like(ids)
    if side == "right":
        mask[:, :REAL] = 1
    else:
        mask[:, -REAL:] = 1
    return ids, mask


def routed_areas(layers: dict) -> dict[str, list[torch.Tensor]]:
    """By name, the (tokens,) area of each token in each training forward of each `SALAreaLinear` (forward hooks)."""
    routed: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    for name, layer in layers.items():
        layer.register_forward_hook(
            lambda module, inputs, output, name=name: (
                routed[name].append(inputs[1].clone()) if module.training else None
            )
        )
    return routed


def padded_lm(**overrides):
    return lm(pad_token_id=PAD, **overrides)


def classifier(**overrides) -> SALTransformerForSequenceClassification:
    torch.manual_seed(0)
    return SALTransformerForSequenceClassification(tiny(num_labels=2, pad_token_id=PAD, **overrides))


# ---------------------------------------------------------------------------------- 1. padding selects no area


@pytest.mark.parametrize(
    "head, side, implementation",
    [
        ("lm", "right", "split"),
        ("lm", "left", "masked"),
        ("classifier", "left", "split"),
        ("classifier", "right", "masked"),
    ],
)
def test_an_area_only_padding_selects_stays_bit_identical_under_adamw(head, side, implementation, tmp_path):
    """Mirrors `test_transformer.py::test_unselected_areas_stay_bit_identical_under_adamw` with a padded batch: an
    area that only padding tokens route to gets no gradient (None), so AdamW's weight decay cannot move it. Nor can
    it move an area that only real tokens without error select (the LM's last real token, whose next token is
    padding; the classifier's tokens before the pooled one, in the local rule): their gradient is zero, and the
    pre-step hook drops it."""
    overrides = {"num_areas": 16, "area_down_proj": True, "area_implementation": implementation}
    model = padded_lm(**overrides) if head == "lm" else classifier(**overrides)
    ids, mask = padded(side)
    keep = mask.view(-1).bool()
    labels = ids[0].masked_fill(~mask[0].bool(), -100) if head == "lm" else 1
    before = copy.deepcopy(model.state_dict())
    layers = {n: m for n, m in model.named_modules() if isinstance(m, SALAreaLinear)}
    routed = routed_areas(layers)
    args = training_args(tmp_path, per_device_train_batch_size=1, max_steps=1, weight_decay=0.1, learning_rate=1e-2)
    data = [{"input_ids": ids[0], "attention_mask": mask[0], "labels": labels}]
    SALTrainer(model=model, args=args, train_dataset=data).train()
    state = model.state_dict()
    if head == "lm":  # position t carries error when it and the token it predicts are real
        erring = keep & torch.cat([keep[1:], torch.tensor([False])])
    else:  # the pooled token: the last real one
        erring = torch.zeros_like(keep)
        erring[int(keep.nonzero().max())] = True
    silent = 0
    for name in layers:
        (area,) = routed[name]  # one training forward
        real, pads, learning = set(area[keep].tolist()), set(area[~keep].tolist()), set(area[erring].tolist())
        only_padding = pads - real
        assert only_padding, (name, real, pads)  # the precondition: some area is selected by padding alone
        silent += len(real - learning)
        for k in range(16):
            for part in ("weight", "bias"):
                key = f"{name}.{part}_{k}"
                if k not in learning:
                    assert torch.equal(state[key], before[key]), (key, k in only_padding)
                elif part == "weight":  # an area that took error takes the step (weight decay at least)
                    assert not torch.equal(state[key], before[key]), key
    if head == "classifier":  # (the LM's one error-free real token shares its area; the next test covers the LM)
        assert silent, "no area was selected by error-free real tokens alone: that case is not exercised"


@pytest.mark.parametrize("implementation", ["split", "masked"])
def test_an_area_only_prompt_tokens_select_stays_bit_identical_under_adamw(implementation, tmp_path):
    """Fine-tuning on answers only: the prompt's labels are -100, so its tokens carry no error. With the transformer's
    shipped feedback (identity for `sal`) an area that only prompt tokens select gets a zero gradient, which the
    pre-step hook drops before AdamW's momentum and weight decay can move it; the areas the answer selects step."""
    config = {k: v for k, v in TINY.items() if k != "feedback_alignment"}  # the shipped feedback default
    torch.manual_seed(0)
    model = SALTransformerForCausalLM(
        SALTransformerConfig(
            **{**config, "num_areas": 16, "area_down_proj": True, "area_implementation": implementation}
        )
    )
    ids = token_batch(1, length=LENGTH, seed=3)[0]
    labels = ids.clone()
    labels[:PROMPT] = -100
    erring = torch.arange(LENGTH) >= PROMPT - 1  # position t predicts label t + 1 ...
    erring[-1] = False  # ... and the last one predicts nothing
    layers = {n: m for n, m in model.named_modules() if isinstance(m, SALAreaLinear)}
    seen = routed_areas(layers)
    before = copy.deepcopy(model.state_dict())
    args = training_args(tmp_path, per_device_train_batch_size=1, max_steps=1, weight_decay=0.1, learning_rate=1e-2)
    SALTrainer(model=model, args=args, train_dataset=[{"input_ids": ids, "labels": labels}]).train()
    state, silent = model.state_dict(), 0
    for name in layers:
        (area,) = seen[name]
        area = area.view(-1)
        learning = set(area[erring].tolist())
        silent += len(set(area.tolist()) - learning)
        for k in range(16):
            for part in ("weight", "bias"):
                key = f"{name}.{part}_{k}"
                assert torch.equal(state[key], before[key]) == (k not in learning), (key, k in learning)
    assert silent, "no area was selected by prompt tokens alone: the case is not exercised"


@pytest.mark.parametrize("implementation", ["split", "masked"])
@pytest.mark.parametrize("partition", [False, True])
def test_a_masked_row_goes_through_no_area(implementation, partition):
    """`SALAreaLinear(..., mask=...)`: a row the mask drops gives a zero output and puts no area in the graph (split)
    or in the selection record (masked); kept rows are computed exactly as without the mask."""
    torch.manual_seed(0)
    layer = SALAreaLinear(8, 8, 4, partition=partition, implementation=implementation)
    for param in layer.parameters():  # `torch.empty` until a model initialises them
        torch.nn.init.normal_(param)
    x = torch.randn(6, 8)
    area = torch.tensor([0, 1, 1, 2, 3, 3])
    mask = torch.tensor([True, True, True, False, True, False])  # area 2 is selected by a dropped row only
    with torch.no_grad():  # not a training forward: records nothing
        unmasked = layer(x, area)
    y = layer(x, area, mask=mask)
    assert torch.equal(y[~mask], torch.zeros(2, 8))
    assert torch.allclose(y[mask], unmasked[mask], atol=1e-6)
    y.sum().backward()
    grads = [w.grad for w in layer.weights]
    if implementation == "split":
        assert grads[2] is None and all(grads[k] is not None for k in (0, 1, 3))
    else:
        assert layer.selected_areas.tolist() == [True, True, False, True]


def test_padding_changes_no_logit_at_a_real_position():
    """Whatever the padding holds, and on either side, the real positions' outputs are those of the sequence alone
    (left padding shifts the absolute positions; rotary attention depends on relative ones, up to rounding)."""
    model = padded_lm(num_areas=16, area_down_proj=True).eval()
    alone = token_batch(1, length=REAL, seed=0)
    with torch.no_grad():
        expected = model(input_ids=alone).logits[0]
        for side in ("right", "left"):
            ids, mask = padded(side)
            real = mask[0].bool()
            other = ids.masked_fill(mask == 0, 0)  # other padding content
            a = model(input_ids=ids, attention_mask=mask).logits[0]
            b = model(input_ids=other, attention_mask=mask).logits[0]
            assert torch.allclose(a[real], expected, atol=1e-5), side
            assert torch.allclose(a[real], b[real], atol=1e-6), side
        scorer = classifier(num_areas=16, area_down_proj=True).eval()
        pooled = scorer(input_ids=alone).logits
        for side in ("right", "left"):
            ids, mask = padded(side)
            assert torch.allclose(scorer(input_ids=ids, attention_mask=mask).logits, pooled, atol=1e-5), side


# ----------------------------------------------------------------------------- 2. router statistics stay fp32


def models_to_cast():
    torch.manual_seed(0)
    return [SALForImageClassification(tiny_config()), lm(num_areas=4)]


@pytest.mark.parametrize("index", [0, 1], ids=["mlp", "transformer"])
def test_router_statistics_stay_fp32_when_the_model_is_cast_to_bf16(index):
    model = models_to_cast()[index].to(torch.bfloat16)
    assert next(p for n, p in model.named_parameters() if "router" not in n).dtype == torch.bfloat16
    for router in model.routers:
        for name in ("input_mean", "area_bias", "prototypes"):
            assert getattr(router, name).dtype == torch.float32, name
        # A balancing step of 1e-3 on a bias of 1.0: bf16 (spacing 2^-7 at 1.0) would round it away.
        router.area_bias.fill_(1.0)
        router.pending_load.zero_()
        router.pending_load[0] = 8.0  # area 0 took every sample: the others get cheaper by balance_rate
        router.update_statistics()
        assert float(router.area_bias[1]) == pytest.approx(1.0 + router.balance_rate, rel=1e-6)
    # A bf16 forward (training mode: statistics gathered in fp32) runs and routes.
    model.train()
    if index == 0:
        out = model(pixel_values=torch.randn(8, 16, dtype=torch.bfloat16), labels=torch.arange(8) % 5)
    else:
        x = token_batch(2)
        out = model(input_ids=x, labels=x)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    model.update_routing_statistics()  # the second step: the running mean moves to the bf16 inputs' mean, in fp32
    for router in model.routers:
        assert int(router.num_updates) == 2 and router.input_mean.dtype == torch.float32
        assert router.input_mean.abs().sum() > 0


@pytest.mark.parametrize("index", [0, 1], ids=["mlp", "transformer"])
def test_router_statistics_stay_fp32_when_loaded_in_bf16(index, tmp_path):
    model = models_to_cast()[index]
    for router in model.routers:
        router.area_bias.fill_(1.0 + 1e-3)  # not representable in bf16
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    for a, b in zip(model.routers, loaded.routers):
        for name in ("input_mean", "area_bias", "prototypes"):
            assert getattr(b, name).dtype == torch.float32, name
            assert torch.equal(getattr(a, name), getattr(b, name)), name


# ------------------------------------------------------------------ 3. the transformer's missing-weights check


@pytest.fixture
def saved_lm(tmp_path):
    model = lm(num_areas=4).eval()
    model.save_pretrained(tmp_path / "lm")
    return model, tmp_path / "lm"


def test_a_transformer_checkpoint_with_a_deleted_tensor_raises_naming_it(saved_lm):
    _, path = saved_lm
    weights = load_file(path / "model.safetensors")
    del weights["model.layers.1.mlp.up.weight_2"]
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"(?s)lacks 1 weights.*model\.layers\.1\.mlp\.up\.weight_2.*re-save"):
        AutoModelForCausalLM.from_pretrained(path)


@pytest.mark.parametrize("num_areas", [8, 2])
def test_a_transformer_checkpoint_saved_with_other_num_areas_raises(saved_lm, num_areas):
    _, path = saved_lm
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "num_areas": num_areas}))
    with pytest.raises(ValueError, match=f"(?s){path}.*num_areas"):
        AutoModelForCausalLM.from_pretrained(path)


def test_a_classifier_checkpoint_without_its_head_raises_but_an_lm_body_loads(saved_lm, tmp_path):
    model, path = saved_lm
    scorer = classifier(num_areas=4)
    scorer.save_pretrained(tmp_path / "classifier")
    weights = load_file(tmp_path / "classifier" / "model.safetensors")
    del weights["score.weight"]
    save_file(weights, tmp_path / "classifier" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"score\.weight"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "classifier")
    # A language model's checkpoint has no `score` head: fine-tuning starts it fresh (test_transformer_hub.py).
    started = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)
    assert all(
        torch.equal(a, b) for a, b in zip(model.model.state_dict().values(), started.model.state_dict().values())
    )


def test_a_body_checkpoint_loads_as_a_causal_lm_with_a_fresh_head_but_an_lm_without_its_head_raises(saved_lm, tmp_path):
    """Found in review: `AutoModelForCausalLM` refused a `SALTransformerModel` (AutoModel) checkpoint, blaming a
    corrupted file; transformers' causal LMs load a body and draw `lm_head` fresh."""
    model, path = saved_lm
    model.model.save_pretrained(tmp_path / "body")
    started, info = AutoModelForCausalLM.from_pretrained(tmp_path / "body", output_loading_info=True)
    # The head, and the feedback matrices that the head's class holds (regenerated from the config).
    assert {key for key in info["missing_keys"] if not key.startswith("feedback.")} == {"lm_head.weight"}
    assert all(
        torch.equal(a, b) for a, b in zip(model.model.state_dict().values(), started.model.state_dict().values())
    )
    weights = load_file(path / "model.safetensors")
    del weights["lm_head.weight"]
    (tmp_path / "headless").mkdir()
    save_file(weights, tmp_path / "headless" / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "headless" / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(ValueError, match=r"lm_head\.weight"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "headless")


def test_a_transformer_round_trip_still_loads_with_identical_logits(saved_lm):
    model, path = saved_lm
    loaded, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"]
    x = token_batch(2)
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, loaded.eval()(input_ids=x).logits)


def test_a_bp_transformer_checkpoint_loads_for_sal_with_regenerated_feedback(tmp_path):
    lm(learning_rule="bp").save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, learning_rule="sal")
    assert all(torch.equal(a, b) for a, b in zip(loaded.feedback_matrices(), lm().feedback_matrices()))


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param([], id="fixed"),  # the tests' tiny config: fixed random feedback
        pytest.param(["feedback_alignment=null"], id="defaults"),  # the shipped default: identity feedback for sal
        # Learned feedback: the model returns views of its matrices from the forward, so DDP reduces their gradient.
        pytest.param(["feedback_alignment=kolen_pollack", "feedback_decay=0.01"], id="kolen_pollack"),
    ],
)
def test_two_processes_train_the_transformer_like_one(fields, tmp_path):
    """2 CPU processes (gloo, DDP) x batch 4 end with the weights, routing state and feedback of 1 process x batch 8."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    worker = ["tests/ddp_transformer_worker.py"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    runs = {
        "two": [*launch, *worker, str(tmp_path / "two"), "4"],
        "one": [sys.executable, *worker, str(tmp_path / "one"), "8"],
    }
    for name, command in runs.items():
        done = subprocess.run([*command, *fields], cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"processes={2 if name == 'two' else 1}" in done.stdout
    one, two = (load_file(tmp_path / name / "model.safetensors") for name in ("one", "two"))
    assert one.keys() == two.keys()
    assert int(one["model.layers.0.mlp.router.num_updates"]) == 4
    fresh = lm(**parse_fields(fields))
    learned = "feedback_alignment=kolen_pollack" in fields
    assert torch.equal(one["feedback.layer_0"], fresh.feedback.layer_0) != learned  # learned feedback moved
    assert torch.equal(one["feedback.layer_0"], torch.eye(32)) == (fields == ["feedback_alignment=null"])
    for key in one:
        # Attention's reductions sum in another order over 4 and 8 sequences: float32 round-off, not a real change.
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=2e-5, msg=key)


def one_batch_and_two_micro_batches(rows: list[dict], tmp_path: Path, **fields) -> list[dict[str, torch.Tensor]]:
    """The change of every weight after one SGD step (lr 1, no clipping) on the 4 rows as one batch, then as two
    accumulated micro-batches of 2, from the same start: a causal LM with the defaults but `fields`."""
    from transformers import TrainingArguments

    changes = []
    for batch, steps in ((4, 1), (2, 2)):
        torch.manual_seed(0)
        size = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
        model = SALTransformerForCausalLM(SALTransformerConfig(**size, max_position_embeddings=16, **fields))
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        args = TrainingArguments(
            str(tmp_path / f"b{batch}"),
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=steps,
            max_steps=1,
            optim="sgd",
            learning_rate=1.0,
            max_grad_norm=0.0,
            report_to=[],
            use_cpu=True,
            save_strategy="no",
        )
        SALTrainer(model=model, args=args, train_dataset=rows).train()
        changes.append({n: p.detach() - before[n] for n, p in model.named_parameters()})
    return changes


def test_accumulating_padded_micro_batches_moves_the_routers_as_one_batch(tmp_path):
    """Found in review: each router's objective was a mean over its micro-batch's unpadded tokens, so with padding
    the routers' projections stepped 8-20% away from one batch of both (every other weight was exact)."""
    x = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(4, 8, dtype=torch.long)
    mask[2:, 3:] = 0  # the second micro-batch has 3 tokens a row, the first 8
    labels = x.masked_fill(mask == 0, -100)
    rows = [{"input_ids": a, "attention_mask": m, "labels": b} for a, m, b in zip(x, mask, labels)]
    changes = one_batch_and_two_micro_batches(rows, tmp_path)
    routers = [n for n in changes[0] if "router.projection" in n]
    assert routers and all(changes[0][n].norm() > 0 for n in routers)
    for name, one in changes[0].items():
        assert (changes[1][name] - one).norm() <= 1e-5 * one.norm() + 1e-9, name


@pytest.mark.parametrize("rule", ["sal", "bp"])
def test_accumulating_micro_batches_of_unequal_token_counts_equals_one_batch(rule, tmp_path):
    """The local rule's loss was a mean over each micro-batch's own tokens: two micro-batches whose rows count
    different numbers of tokens (prompts labelled -100) moved the weights 64% away from one batch of both (bp: 1e-7).
    With the defaults, as users train."""
    x = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(0))
    labels = x.clone()
    labels[2:, :6] = -100  # the second micro-batch counts 2 tokens a row, the first 7
    rows = [{"input_ids": a, "labels": b} for a, b in zip(x, labels)]
    changes = [
        torch.cat([d.flatten() for d in run.values()])
        for run in one_batch_and_two_micro_batches(rows, tmp_path, learning_rule=rule)
    ]
    assert changes[0].norm() > 0
    assert (changes[1] - changes[0]).norm() / changes[0].norm() < 1e-5
