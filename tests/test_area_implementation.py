"""SALAreaLinear's two implementations: `masked` (every area in one GEMM, no host sync) computes what `split` does,
and with `clear_unselected_area_grads` hands the optimizer the same gradients (None for unselected areas)."""

import json
import socket
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_batch, tiny_config

from sal_hf import SALConfig, SALForImageClassification
from sal_hf.learning_rule import LocalLearningRule
from sal_hf.modeling_sal import ACTIVATIONS, SALAreaLinear, clear_unselected_area_grads


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from scale import SCALE_CONFIG  # noqa: E402


CASES = [
    ("sal", {}),
    ("sal", {"area_mode": "partition"}),
    ("sal", {"output_areas": True, "dual_path": True, "area_update_norm": "area"}),
    ("sal", {"routing_scope": "shared", "residual": True, "norm": "layernorm", "hidden_sizes": [32, 32, 32]}),
    ("fa", {"num_areas": 1, "output_areas": False}),
    ("bp", {"output_areas": True}),
]


def gradients(implementation: str, rule: str, overrides: dict) -> tuple[torch.Tensor, dict, SALForImageClassification]:
    """Logits and every parameter's `.grad` after one training forward and backward (local rule or BP)."""
    torch.manual_seed(0)
    config = tiny_config(learning_rule=rule, area_implementation=implementation, **{"num_areas": 8, **overrides})
    model = SALForImageClassification(config).train()
    x, y = tiny_batch(6)  # 6 samples cannot reach all 8 areas
    outputs = model(pixel_values=x, labels=y, local=rule != "bp")
    if rule == "bp":
        loss = outputs.loss
    else:
        local = LocalLearningRule(
            rule,
            feedback_mode=config.feedback_mode,
            activation=ACTIVATIONS[config.hidden_act],
            area_norm=config.area_update_norm,
            num_areas=config.num_areas,
            residual=config.residual,
            residual_scale=config.residual_scale,
        )
        loss = local.surrogate(outputs, y, model.feedback.matrices())
    loss.backward()
    return outputs.logits.detach(), {name: p.grad for name, p in model.named_parameters()}, model


@pytest.mark.parametrize("rule, overrides", CASES)
def test_masked_gives_the_outputs_and_area_gradients_of_split(rule, overrides):
    logits, split, _ = gradients("split", rule, overrides)
    masked_logits, masked, model = gradients("masked", rule, overrides)
    torch.testing.assert_close(masked_logits, logits)
    unselected = [name for name, grad in split.items() if grad is None and ".areas." in name]
    if model.config.num_areas > 1:
        assert unselected, "every area was selected: the zero-gradient case is not exercised"
    for name, grad in split.items():
        if grad is None and ".areas." not in name:  # BP does not train the routers
            assert masked[name] is None, name
        elif grad is None:
            # Masked puts every area in the graph: an unselected one gets an all-zero gradient ...
            assert masked[name] is not None and not masked[name].any(), name
        else:
            torch.testing.assert_close(masked[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    # ... which the pre-step hook drops, leaving exactly the gradients split gives.
    assert clear_unselected_area_grads(model) == len(unselected)
    assert [name for name, p in model.named_parameters() if p.grad is None] == [
        n for n, g in split.items() if g is None
    ]
    assert all(layer.selected_areas is None for layer in model.modules() if isinstance(layer, SALAreaLinear))


def test_selection_is_recorded_by_training_forwards_only_and_accumulates():
    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config(num_areas=8, area_implementation="masked"))
    layer = model.sal.layers[0].areas
    x, _ = tiny_batch(12)
    with torch.no_grad():
        model.train()(pixel_values=x)
    model.eval()(pixel_values=x)
    assert layer.selected_areas is None, "evaluation or no-grad forwards must not count as selections"
    model.train()
    first = set(model(pixel_values=x[:3]).areas[0].tolist())
    second = set(model(pixel_values=x[3:]).areas[0].tolist())
    assert first != first | second  # the second forward adds areas, so the union below is a real union
    assert set(layer.selected_areas.nonzero().flatten().tolist()) == first | second


@pytest.mark.parametrize(
    "implementation, num_areas, device, masked",
    [
        ("auto", 16, "cuda", True),
        ("auto", 64, "cuda", True),
        ("auto", 65, "cuda", False),
        ("auto", 16, "cpu", False),
        ("masked", 16, "cpu", True),
        ("split", 16, "cuda", False),
        ("masked", 1, "cpu", False),  # one area is one nn.Linear either way
    ],
)
def test_auto_picks_masked_on_cuda_up_to_64_areas(implementation, num_areas, device, masked):
    layer = SALAreaLinear(2, 2, num_areas, implementation=implementation)
    assert layer.uses_masked(torch.device(device)) is masked


def test_the_1e9_model_stays_split_on_cuda():
    with torch.device("meta"):
        model = SALForImageClassification(SALConfig(**SCALE_CONFIG))
    layers = [m for m in model.modules() if isinstance(m, SALAreaLinear) and m.num_areas > 1]
    assert layers and not any(layer.uses_masked(torch.device("cuda")) for layer in layers)


def test_area_implementation_is_not_saved_and_old_checkpoints_load_as_auto(tmp_path):
    model = SALForImageClassification(tiny_config(area_implementation="masked"))
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "area_implementation" not in saved and saved["num_areas"] == 4  # a checkpoint without the field
    assert SALForImageClassification.from_pretrained(tmp_path).config.area_implementation == "auto"
    loaded = SALForImageClassification.from_pretrained(tmp_path, area_implementation="masked")
    assert {m.implementation for m in loaded.modules() if isinstance(m, SALAreaLinear)} == {"masked"}
    with pytest.raises(ValueError, match="area_implementation='dense'"):
        SALForImageClassification.from_pretrained(tmp_path, area_implementation="dense")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ddp_worker(rank: int, port: int) -> None:
    """One of two gloo processes: DDP averages the gradients, so an area that only the other process selected
    has a real gradient here and must keep it."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = SALForImageClassification(tiny_config(num_areas=8, hidden_sizes=[32], area_implementation="masked"))
        ddp = DistributedDataParallel(model.train())
        x, y = tiny_batch(3, seed=rank)
        ddp(pixel_values=x, labels=y).loss.backward()
        layer = model.sal.layers[0].areas
        mine = set(layer.selected_areas.nonzero().flatten().tolist())
        everyone = [None, None]
        dist.all_gather_object(everyone, mine)
        union = everyone[0] | everyone[1]
        assert union - mine and len(union) < 8, f"data does not exercise the reduction: {everyone}"
        clear_unselected_area_grads(ddp)
        kept = {k for k, weight in enumerate(layer.weights) if weight.grad is not None}
        assert kept == union, f"rank {rank}: kept gradients of {kept}, areas selected on any rank {union}"
    finally:
        dist.destroy_process_group()


def test_under_ddp_an_area_selected_on_any_process_keeps_its_gradient():
    torch.multiprocessing.spawn(ddp_worker, args=(free_port(),), nprocs=2, join=True)
