import os

import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

# The foundation's area design, pinned so that these tests keep testing what they were written for (independent
# areas, no shared path, one lr, routers included) now that SALConfig's defaults differ (docs/ABLATIONS.md,
# docs/ROUTING.md).
TINY = {
    "input_size": 16,
    "hidden_sizes": [32, 32],
    "num_labels": 5,
    "num_areas": 4,
    "area_init": "independent",
    "dual_path": False,
    "area_lr_scale": 1.0,
    "router_lr_scale": 1.0,
}


# What users get: `SALConfig()`'s shipped defaults (K = 16, the dual path, identical areas, area lr 1/K) on the
# tiny input, nothing else pinned.
DEFAULTS = {"input_size": 16, "hidden_sizes": [32, 32], "num_labels": 5}


def tiny_config(**overrides):
    from sal_hf import SALConfig

    return SALConfig(**{**TINY, **overrides})


def defaults_config(**overrides):
    from sal_hf import SALConfig

    return SALConfig(**{**DEFAULTS, **overrides})


# `@pytest.mark.parametrize("make_config", CONFIGS)`: a test of locality, selectivity or save / load runs on the
# pinned foundation design and on what users get.
CONFIGS = [pytest.param(tiny_config, id="tiny"), pytest.param(defaults_config, id="defaults")]


def tiny_batch(n: int = 32, seed: int = 0, input_size: int = TINY["input_size"], num_labels: int = TINY["num_labels"]):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, input_size, generator=generator)
    y = torch.randint(0, num_labels, (n,), generator=generator)
    return x, y


def as_dataset(x: torch.Tensor, y: torch.Tensor) -> list[dict]:
    return [{"pixel_values": xi, "labels": int(yi)} for xi, yi in zip(x, y)]


def record_training_areas(layers: dict) -> dict[str, list[set[int]]]:
    """By name, the areas each training forward of each `SALAreaLinear` in `layers` selected (forward hooks)."""
    seen: dict[str, list[set[int]]] = {name: [] for name in layers}
    for name, layer in layers.items():

        def record(module, inputs, output, name=name):  # inputs = (x, area)
            if module.training:
                seen[name].append(set(inputs[1].tolist()))

        layer.register_forward_hook(record)
    return seen


def count_training_routes(model) -> list[list[torch.Tensor]]:
    """Per router of `model`, the (K,) area counts of each of its training forwards (forward hooks)."""
    counts: list[list[torch.Tensor]] = [[] for _ in model.routers]
    for index, router in enumerate(model.routers):

        def record(module, inputs, output, index=index):  # output = (area, routed)
            if module.training and torch.is_grad_enabled():
                counts[index].append(torch.bincount(output[0], minlength=module.num_areas))

        router.register_forward_hook(record)
    return counts


def reload_identically(model, directory, x: torch.Tensor):
    """`save_pretrained` to `directory`, then `from_pretrained`: every parameter bit for bit and the same eval-mode
    logits on `x`. Returns the loaded model."""
    model.save_pretrained(directory)
    loaded = type(model).from_pretrained(directory)
    for name, p in model.named_parameters():
        torch.testing.assert_close(dict(loaded.named_parameters())[name], p, rtol=0, atol=0, msg=name)
    model.eval(), loaded.eval()
    torch.testing.assert_close(loaded(pixel_values=x).logits, model(pixel_values=x).logits, rtol=0, atol=0)
    return loaded


def one_sgd_step(config, tmp_path, **overrides):
    """(trainer, the change of every parameter) after one plain-SGD step of SALTrainer at lr 0.1 on 64 tiny samples:
    the learning-rate multipliers' tests compare two of these. ``overrides`` replace TrainingArguments (``optim``...)."""
    from sal_hf import SALForImageClassification, SALTrainer

    torch.manual_seed(0)
    model = SALForImageClassification(config)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    x, y = tiny_batch(64)
    step = dict(
        optim="sgd", per_device_train_batch_size=64, max_steps=1, learning_rate=0.1, lr_scheduler_type="constant"
    )
    args = training_args(tmp_path, **{**step, **overrides})
    trainer = SALTrainer(model=model, args=args, train_dataset=as_dataset(x, y))
    trainer.train()
    return trainer, {name: p.detach() - before[name] for name, p in model.named_parameters()}


def training_args(tmp_path, **overrides):
    from transformers import TrainingArguments

    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=16,
        learning_rate=1e-2,
        num_train_epochs=1,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    return TrainingArguments(**{**defaults, **overrides})


@pytest.fixture
def seeded():
    torch.manual_seed(0)


def reachable_leaves(tensor: torch.Tensor) -> set[int]:
    """ids of the leaf tensors (parameters) that a backward from `tensor` would write `.grad` to."""
    seen, leaves, stack = set(), set(), [tensor.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):
            leaves.add(id(fn.variable))
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return leaves
