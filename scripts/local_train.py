"""A plain training loop for the scripts that need many short runs (continual.py, width.py).

It builds what `SALTrainer` builds (the model, `local_learning_rule(config)`, AdamW with the area parameters and the
learned routing projections in their own lr groups, the unselected-area hook, routing statistics applied after
every step, gradient clipping at 1.0 as Trainer's default) without Trainer's per-step and per-evaluation overhead, which dominates runs of a few
hundred steps on a shared two-core machine. Never imported by the package.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sal_hf import SALConfig, SALForImageClassification  # noqa: E402
from sal_hf.optim import (  # noqa: E402
    area_layers,
    hook_unselected_area_grads,
    lr_scaled_parameters,
    reset_area_selection,
    scale_learning_rates,
)
from sal_hf.trainer import local_learning_rule  # noqa: E402


def build(fields: dict, *, input_size: int, num_labels: int, hidden_sizes: list[int], seed: int, lr: float):
    """(model, rule or None for bp, optimizer) for one run; `fields` are SALConfig overrides."""
    torch.manual_seed(seed)
    config = SALConfig(
        input_size=input_size,
        hidden_sizes=hidden_sizes,
        num_labels=num_labels,
        routing_seed=10 * seed,
        feedback_seed=1000 + 10 * seed,
        area_implementation="split",
        **fields,
    )
    model = SALForImageClassification(config).train()
    rule = None if config.learning_rule == "bp" else local_learning_rule(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for scale, params in lr_scaled_parameters(model, config).values():
        scale_learning_rates(optimizer, params, scale)
    if area_layers(model):
        hook_unselected_area_grads(optimizer, model)
    return model, rule, optimizer


def train_epoch(
    model, rule, optimizer, x: torch.Tensor, y: torch.Tensor, batch_size: int, generator, before_forward=None
) -> float:
    """One pass over (x, y) in a random order; returns the mean training loss. `before_forward(xb, yb)`, when given,
    runs before each batch's forward (continual.py's task-oracle routing reads the batch's labels there)."""
    model.train()
    order = torch.randperm(len(y), generator=generator)
    total, steps = 0.0, 0
    for start in range(0, len(y), batch_size):
        index = order[start : start + batch_size]
        xb, yb = x[index], y[index]
        optimizer.zero_grad(set_to_none=True)
        if before_forward is not None:
            before_forward(xb, yb)
        if rule is None:
            loss = model(pixel_values=xb, labels=yb).loss
        else:
            outputs = model(pixel_values=xb, labels=yb, local=True)
            loss = rule.surrogate(outputs, yb, model.feedback_matrices())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        model.update_routing_statistics()
        reset_area_selection(model)
        total += float(loss.detach())
        steps += 1
    return total / max(steps, 1)


@torch.no_grad()
def predict(model, x: torch.Tensor, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits (N, C), first hidden layer's areas (N,) or None), in eval mode."""
    model.eval()
    logits, areas = [], []
    for start in range(0, len(x), batch_size):
        out = model(pixel_values=x[start : start + batch_size], return_areas=True)
        logits.append(out.logits.float())
        if out.areas[0] is not None:
            areas.append(out.areas[0])
    model.train()
    return torch.cat(logits), (torch.cat(areas) if areas else None)


def load_tensors(dataset: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"train": (x, y), "test": (x, y)}: x (N, input_size) float in [0, 1], y (N,) long."""
    from sal_hf.data import TensorRows, load_image_dataset

    data = load_image_dataset(dataset)
    tensors = {}
    for split in ("train", "test"):
        columns = TensorRows(data[split]).columns
        x = columns["pixel_values"].float()
        tensors[split] = (x.reshape(len(x), -1), columns["labels"].long())
    return tensors
