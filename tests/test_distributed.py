"""Accelerate: multi-process equivalence, gradient accumulation, mixed precision, exact resume."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import as_dataset, tiny_batch, tiny_config, training_args
from safetensors.torch import load_file

from sal_hf import SALConfig, SALForImageClassification, SALTrainer
from sal_hf.areas import SALAreaLinear
from sal_hf.routing import AreaRouter


ROOT = Path(__file__).resolve().parents[1]


def train(tmp_path, name, steps=3, x_y=None, config=None, resume=None, **args):
    torch.manual_seed(0)
    model = SALForImageClassification(config or tiny_config())
    x, y = x_y if x_y is not None else tiny_batch(64)
    arguments = training_args(tmp_path / name, max_steps=steps, learning_rate=3e-3, **args)
    trainer = SALTrainer(model=model, args=arguments, train_dataset=as_dataset(x, y))
    trainer.train(resume_from_checkpoint=resume)
    return model, trainer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    "model_flags",
    [
        # K = 4 with per-area Kolen-Pollack feedback matrices (K, C, d_l), reduced like the shared ones.
        pytest.param(["--num_areas", "4", "--hidden_sizes", "32", "32", "--feedback_scope", "area"], id="k4"),
        # The script's defaults are SALConfig's: K = 16, hidden [256], dual path, identical areas, area lr / 16,
        # direct feedback learned by Kolen-Pollack (the model returns views of the matrices, so DDP reduces them).
        pytest.param([], id="defaults"),
        # Learned feedback matrices: the model returns views of them, so DDP reduces their Kolen-Pollack gradient.
        pytest.param(
            [
                "--num_areas",
                "4",
                "--hidden_sizes",
                "32",
                "32",
                "--feedback",
                "layerwise",
                "--feedback_alignment",
                "kolen_pollack",
            ],
            id="kp",
        ),
        # A residual, layer-normed stack with residual-stream feedback: its one learned matrix is reduced too.
        pytest.param(
            ["--num_areas", "4", "--hidden_sizes", "32", "32", "32", "--residual", "true", "--norm", "layernorm"]
            + ["--feedback", "stream"],
            id="stream",
        ),
    ],
)
def test_two_processes_end_with_the_weights_of_one(model_flags, tmp_path):
    """2 CPU processes (gloo) x batch 8 train exactly like 1 process x batch 16 (routing state reduced)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    common = [
        "examples/train_accelerate.py",
        "--max_train_samples",
        "256",
        "--max_steps",
        "4",
        "--use_cpu",
        "true",
        "--disable_tqdm",
        "true",
        *model_flags,
        "--eval_strategy",
        "no",
    ]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    runs = {
        "two": launch + common + ["--output_dir", str(tmp_path / "two"), "--per_device_train_batch_size", "8"],
        "one": [sys.executable]
        + common
        + ["--output_dir", str(tmp_path / "one"), "--per_device_train_batch_size", "16"],
    }
    for name, command in runs.items():
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"processes={2 if name == 'two' else 1}" in done.stdout
    assert (tmp_path / "one" / "preprocessor_config.json").is_file()  # the saved folder is pipeline-ready
    one, two = (load_file(tmp_path / name / "model.safetensors") for name in ("one", "two"))
    assert one.keys() == two.keys()
    assert int(one["sal.layers.0.router.num_updates"]) == 4
    # The learned feedback matrices moved (identically in both runs, checked below): the default's, layer-wise KP's
    # and the per-area ones.
    learned = {"feedback_alignment": "kolen_pollack"}
    if "kolen_pollack" in model_flags:
        learned.update(hidden_sizes=[32, 32], feedback="layerwise")
    if "stream" in model_flags:
        learned.update(hidden_sizes=[32, 32, 32], num_areas=4, residual=True, norm="layernorm", feedback="stream")
    if "area" in model_flags:
        learned.update(hidden_sizes=[32, 32], num_areas=4, feedback_scope="area")
    fresh = SALForImageClassification(SALConfig(input_size=64, num_labels=10, **learned))
    assert fresh.feedback.layer_0.shape == one["feedback.layer_0"].shape
    assert not torch.equal(one["feedback.layer_0"], fresh.feedback.layer_0)
    areas = sum(key.startswith("sal.layers.0.areas.weight_") for key in one)
    assert areas == (4 if model_flags else 16) and "sal.layers.0.shared.weight" in one  # the dual path (K > 1)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-6, msg=key)


def test_gradient_accumulation_of_two_half_batches_equals_one_batch(tmp_path):
    whole, _ = train(tmp_path, "whole", per_device_train_batch_size=16)
    halves, _ = train(tmp_path, "halves", per_device_train_batch_size=8, gradient_accumulation_steps=2)
    for (name, a), b in zip(whole.state_dict().items(), halves.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=name)


def test_bf16_autocast_trains_with_the_router_in_fp32(tmp_path):
    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config())
    routed, pre_activations = [], []
    for module in model.modules():
        if isinstance(module, AreaRouter):
            module.register_forward_hook(lambda m, i, out: routed.append(out[1].dtype))
        if isinstance(module, SALAreaLinear):
            module.register_forward_hook(lambda m, i, out: pre_activations.append(out.dtype))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = tiny_batch(64)
    args = training_args(tmp_path, max_steps=4, bf16=True, learning_rate=3e-3)
    SALTrainer(model=model, args=args, train_dataset=as_dataset(x, y)).train()
    assert set(pre_activations) == {torch.bfloat16}, "autocast was not active"
    assert set(routed) == {torch.float32}
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(before["sal.layers.0.router.projection"], model.sal.layers[0].router.projection)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 loss scaling needs a CUDA GPU")
def test_fp16_goes_through_the_loss_scaler(tmp_path):
    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config())
    x, y = tiny_batch(64)
    args = training_args(tmp_path, max_steps=4, fp16=True, use_cpu=False, learning_rate=3e-3)
    trainer = SALTrainer(model=model, args=args, train_dataset=as_dataset(x, y))
    trainer.train()
    assert trainer.accelerator.scaler is not None and trainer.accelerator.scaler.get_scale() > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_resume_from_a_checkpoint_ends_with_identical_weights(tmp_path):
    """Interrupted at step 3 of 6 (crossing an epoch boundary) and resumed = uninterrupted, routing state included."""
    data = tiny_batch(32)
    full, _ = train(
        tmp_path, "full", steps=6, x_y=data, per_device_train_batch_size=8, save_strategy="steps", save_steps=3
    )
    checkpoint = tmp_path / "full" / "out" / "checkpoint-3"
    assert (checkpoint / "model.safetensors").exists()
    resumed, trainer = train(
        tmp_path, "resumed", steps=6, x_y=data, per_device_train_batch_size=8, resume=str(checkpoint)
    )
    assert trainer.state.global_step == 6
    assert all(int(r.num_updates) == 6 for r in resumed.routers)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("name, kind", [("cpu", "NO"), ("ddp_gpu", "MULTI_GPU"), ("fsdp_gpu", "FSDP")])
def test_shipped_accelerate_configs_load(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ROOT / "examples" / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type.value == kind
