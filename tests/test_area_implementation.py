"""SALAreaLinear's two implementations: `masked` (every area in one GEMM, no host sync) computes what `split` does,
and with `clear_unselected_area_grads` hands the optimizer the same gradients (None for unselected areas)."""

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, as_dataset, record_training_areas, tiny_batch, tiny_config, training_args

from sal_hf import SALConfig, SALForImageClassification, SALTrainer
from sal_hf.areas import SALAreaLinear
from sal_hf.optim import clear_unselected_area_grads
from sal_hf.trainer import local_learning_rule


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from scale import SCALE_CONFIG  # noqa: E402


CASES = [
    ("sal", {}),
    ("sal", {"area_mode": "partition"}),
    ("sal", {"output_areas": True, "dual_path": True, "area_update_norm": "area"}),
    ("sal", {"routing_scope": "shared", "residual": True, "norm": "layernorm", "hidden_sizes": [32, 32, 32]}),
    ("fa", {"num_areas": 1, "output_areas": False}),
    ("bp", {"output_areas": True}),
]


def gradients(
    implementation: str, rule: str, overrides: dict, device: str = "cpu", make_config=tiny_config
) -> tuple[torch.Tensor, dict, SALForImageClassification]:
    """Logits and every parameter's `.grad` after one training forward and backward (local rule or BP)."""
    torch.manual_seed(0)
    pinned = {"num_areas": 8} if make_config is tiny_config else {}  # the defaults: K = 16
    config = make_config(learning_rule=rule, area_implementation=implementation, **{**pinned, **overrides})
    model = SALForImageClassification(config).to(device).train()
    x, y = (t.to(device) for t in tiny_batch(6))  # 6 samples cannot reach all 8 areas
    outputs = model(pixel_values=x, labels=y, local=rule != "bp")
    if rule == "bp":
        loss = outputs.loss
    else:
        loss = local_learning_rule(config).surrogate(outputs, y, model.feedback.matrices())
    loss.backward()
    return outputs.logits.detach(), {name: p.grad for name, p in model.named_parameters()}, model


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))


@pytest.mark.parametrize("make_config", CONFIGS)
@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("rule, overrides", CASES)
def test_masked_gives_the_outputs_and_area_gradients_of_split(rule, overrides, device, make_config):
    logits, split, _ = gradients("split", rule, overrides, device, make_config)
    masked_logits, masked, model = gradients("masked", rule, overrides, device, make_config)
    torch.testing.assert_close(masked_logits, logits, **({} if device == "cpu" else {"rtol": 1e-2, "atol": 1e-3}))
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
            # (TF32 matmuls on a GPU round differently for the two GEMM shapes.)
            tolerance = {"rtol": 1e-5, "atol": 1e-6} if device == "cpu" else {"rtol": 1e-2, "atol": 1e-3}
            torch.testing.assert_close(masked[name], grad, msg=name, **tolerance)
    # ... which the pre-step hook drops, leaving exactly the gradients split gives, less those of the selected areas
    # whose gradient is exactly zero (partition mode: an area's two output units dead for every row it took).
    still = [name for name, grad in split.items() if ".areas." in name and grad is not None and not grad.any()]
    assert clear_unselected_area_grads(model) == len(unselected) + len(still)
    assert [name for name, p in model.named_parameters() if p.grad is None] == [
        n for n, g in split.items() if g is None or n in still
    ]
    assert all(layer.selected_areas is None for layer in model.modules() if isinstance(layer, SALAreaLinear))


@pytest.mark.parametrize(
    "rule, overrides",
    [*(case for case in CASES if case[0] == "sal"), ("sal", {"hidden_act": "gelu", "feedback": "layerwise"})],
)
def test_masked_local_step_compiles_to_one_graph(rule, overrides):
    """No host sync and no data-dependent shape in the masked model's training forward and the local rule's
    surrogate: torch.compile captures both whole (`fullgraph=True` raises at a graph break), as CUDA graphs need,
    and the compiled step computes what eager does."""
    torch._dynamo.reset()
    logits, eager, _ = gradients("masked", rule, overrides)
    torch.manual_seed(0)
    config = tiny_config(learning_rule=rule, area_implementation="masked", **{"num_areas": 8, **overrides})
    model = SALForImageClassification(config).train()
    rule = local_learning_rule(config)

    def local_step(x, y):
        outputs = model(pixel_values=x, labels=y, local=True)
        return rule.surrogate(outputs, y, model.feedback.matrices()), outputs.logits

    surrogate, compiled_logits = torch.compile(local_step, backend="eager", fullgraph=True)(*tiny_batch(6))
    surrogate.backward()
    torch.testing.assert_close(compiled_logits, logits)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, eager[name], msg=name)


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


def test_under_ddp_an_area_selected_on_any_process_keeps_its_gradient():
    """2 gloo processes under DDP, different data: see tests/ddp_selection_worker.py."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    command = [*launch, "tests/ddp_selection_worker.py"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("kept the gradients of") == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("make_config", CONFIGS)
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_on_cuda_auto_runs_masked_and_trainer_keeps_unselected_areas_bit_identical(precision, make_config, tmp_path):
    torch.manual_seed(0)
    model = SALForImageClassification(make_config(num_areas=16, hidden_sizes=[32], output_areas=True))
    layers = {"sal.layers.0.areas": model.sal.layers[0].areas, "classifier.areas": model.classifier.areas}
    assert all(layer.uses_masked(torch.device("cuda")) for layer in layers.values())  # "auto" on CUDA
    forwards = record_training_areas(layers)
    x, y = tiny_batch(12)  # 2 steps of 2 x 3 samples cannot reach all 16 areas
    before = copy.deepcopy(model.state_dict())
    args = training_args(
        tmp_path,
        per_device_train_batch_size=3,
        gradient_accumulation_steps=2,
        max_steps=2,
        weight_decay=0.5,
        optim="adamw_torch",
        use_cpu=False,
        bf16=precision == "bf16",
        fp16=precision == "fp16",  # through the loss scaler (which may skip a step)
    )
    SALTrainer(model=model, args=args, train_dataset=as_dataset(x, y)).train()
    after = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
    seen = {prefix: set().union(*areas) for prefix, areas in forwards.items()}
    for prefix, layer in layers.items():
        assert 0 < len(seen[prefix]) < layer.num_areas, seen
        for k in range(layer.num_areas):
            for name in (f"{prefix}.weight_{k}", f"{prefix}.bias_{k}"):
                if k not in seen[prefix]:
                    assert torch.equal(after[name], before[name]), f"{name} was never selected but changed"
        assert any(not torch.equal(after[f"{prefix}.weight_{k}"], before[f"{prefix}.weight_{k}"]) for k in seen[prefix])


def test_trainer_with_torch_compile_trains_as_eager(tmp_path):
    """`TrainingArguments(torch_compile=True)` (here with the fast `eager` backend) trains a masked SAL model to the
    same weights as without compiling, and unselected areas stay untouched."""
    x, y = tiny_batch(12)  # 3 steps of 4 samples: some of the 8 areas are never selected
    weights = []
    for compiled in (False, True):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = SALForImageClassification(tiny_config(num_areas=8, area_implementation="masked"))
        before = copy.deepcopy(model.state_dict())
        extra = {"torch_compile": True, "torch_compile_backend": "eager"} if compiled else {}
        trainer = SALTrainer(
            model=model,
            args=training_args(tmp_path, optim="adamw_torch", weight_decay=0.1, per_device_train_batch_size=4, **extra),
            train_dataset=as_dataset(x, y),
        )
        trainer.train()
        assert (type(trainer.model_wrapped).__name__ == "OptimizedModule") == compiled
        weights.append(model.state_dict())
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, msg=name)
    untouched = [name for name, value in weights[1].items() if ".areas." in name and torch.equal(value, before[name])]
    assert untouched, "every area was selected: selectivity under compile is not exercised"


def test_the_hook_keeps_every_area_gradient_with_a_nonzero_entry_and_dense_layers_as_they_are():
    """Which gradients `clear_unselected_area_grads` drops, by hand: an area's exactly-zero gradient (its rows carried
    no error), not one whose bias gradient alone is zero, nor a NaN one (the trainer must see it), nor a K = 1 layer's
    (a dense layer keeps the optimizer's usual behaviour)."""
    areas, dense = SALAreaLinear(3, 2, 4), SALAreaLinear(3, 2, 1)
    model = torch.nn.ModuleList([areas, dense])
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    areas.weight_1.grad[0, 0] = 1.0  # bias gradient zero, weight gradient not: kept
    areas.bias_2.grad[1] = float("nan")  # kept
    areas.weight_3.grad = areas.bias_3.grad = None  # area 3 was not in the graph (split): nothing to clear
    assert clear_unselected_area_grads(model) == 2  # area 0's weight and bias
    assert [areas.weights[k].grad is not None for k in range(4)] == [False, True, True, False]
    assert dense.weight_0.grad is not None and dense.bias_0.grad is not None


class _Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).logits


def test_tracing_takes_the_masked_kernel_under_auto_and_refuses_split():
    """Found in review: on CPU "auto" picks the split kernel, whose per-area sizes torch.jit.trace baked in (other
    inputs then got wrong logits, with only a TracerWarning)."""
    torch.manual_seed(0)
    auto = SALForImageClassification(tiny_config(area_init="independent", area_implementation="auto")).eval()
    x, _ = tiny_batch(16)
    other, _ = tiny_batch(16, seed=1)
    traced = torch.jit.trace(_Logits(auto), (x,), check_trace=False)
    with torch.no_grad():
        torch.testing.assert_close(traced(other), auto(pixel_values=other).logits)
    split = copy.deepcopy(auto)
    for layer in split.modules():
        if isinstance(layer, SALAreaLinear):
            layer.implementation = "split"
    with pytest.raises(ValueError, match="area_implementation='split'.*torch.jit.trace"):
        torch.jit.trace(_Logits(split), (x,), check_trace=False)
