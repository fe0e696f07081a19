"""Training diagnostics of SAL models, logged wherever Trainer logs (TensorBoard, W&B, `log_history`, ...).

[`SALTrainer`] already logs each router's area health with the loss (`area/router_<i>/{min_share,max_share,dead}`).
[`SALDiagnosticsCallback`] adds, at every training log:

- `area/router_<i>/share_<k>`: share of the training samples since router i's area health last reported (the last
  log, unless that log's window held fewer than 4 samples per area) that it sent to area k (the rows of the
  utilisation heat map of `scripts/plot_run.py`);
- `area/router_<i>/churn`: share of a fixed probe batch whose area changed since the last log (0 = stable
  routing, 1 - 1/K = random);
- `alignment/layer_<l>`: angle in degrees between the local update of hidden layer l's area weights and the
  backpropagation gradient of the same weights, on the probe batch (0 = the BP direction, 90 = orthogonal;
  not logged for `learning_rule="bp"`, where they are the same).

The diagnostics never perturb training: the probe runs in eval mode (routers gather no statistics), the
gradients come from `torch.autograd.grad` (no `.grad` is touched), no random number is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from transformers import TrainerCallback

from .learning_rule import LocalLearningRule
from .modeling_sal import SALForImageClassification, SALLayer


def probe_batch(dataset: Sequence[dict[str, Any]], size: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random subset of `dataset` (items with `pixel_values` and `labels`), stacked:
    `(pixel_values (N, ...), labels (N,))`. Drawn from its own generator, so the global RNG is untouched."""
    if len(dataset) == 0:
        raise ValueError("Cannot draw a probe batch from an empty dataset.")
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=generator)[: min(size, len(dataset))].tolist()
    items = [dataset[i] for i in indices]
    pixel_values = torch.stack([torch.as_tensor(item["pixel_values"], dtype=torch.float32) for item in items])
    labels = torch.tensor([int(item["labels"]) for item in items])
    return pixel_values, labels


def routed_layers(model: SALForImageClassification) -> list[tuple[int, SALLayer]]:
    """`(position in outputs.areas, layer)` of every layer that owns a router, in the order of `model.routers`."""
    layers = [*model.sal.layers, model.classifier]
    return [(index, layer) for index, layer in enumerate(layers) if layer.router is not None]


def angle_degrees(a: torch.Tensor, b: torch.Tensor) -> float:
    """Angle between two flat vectors, in degrees; NaN when either is zero."""
    norm = float(a.norm() * b.norm())
    if norm == 0.0:
        return math.nan
    return math.degrees(math.acos(max(-1.0, min(1.0, float(a @ b) / norm))))


def alignment_angles(
    model: SALForImageClassification, rule: LocalLearningRule, pixel_values: torch.Tensor, labels: torch.Tensor
) -> list[float]:
    """Per hidden layer, the angle between the local update and the BP gradient of the layer's forward weights
    (every area and the shared path; not the router, which BP cannot train), on one batch.

    Args:
        model: the model, in eval mode (its routers must not gather statistics).
        rule: the local learning rule the trainer applies.
        pixel_values: (N, ...) inputs.
        labels: (N,) class ids.
    """
    groups = [
        [p for name, p in layer.named_parameters() if not name.startswith("router.")] for layer in model.sal.layers
    ]
    params = [p for group in groups for p in group]
    with torch.enable_grad():
        outputs = model(pixel_values=pixel_values, labels=labels, local=True)
        surrogate = rule.surrogate(outputs, labels, model.feedback_matrices())
        local = torch.autograd.grad(surrogate, params, allow_unused=True)
        backprop = torch.autograd.grad(model(pixel_values=pixel_values, labels=labels).loss, params, allow_unused=True)

    def flat(grads: Sequence[torch.Tensor | None], group: list[torch.nn.Parameter]) -> torch.Tensor:
        # An area that no probe sample selected has no gradient under either rule: it counts as zeros.
        return torch.cat(
            [(g if g is not None else torch.zeros_like(p)).flatten().float() for g, p in zip(grads, group)]
        )

    angles, start = [], 0
    for group in groups:
        end = start + len(group)
        angles.append(angle_degrees(flat(local[start:end], group), flat(backprop[start:end], group)))
        start = end
    return angles


class SALDiagnosticsCallback(TrainerCallback):
    """Per-area utilisation, routing churn and the alignment angle with backpropagation, added to every
    training log of a [`SALTrainer`] (see the module docstring for the names).

    Args:
        pixel_values: (N, ...) fixed probe inputs, e.g. from [`probe_batch`].
        labels: (N,) their labels (for the alignment angle).
        alignment: compute the alignment angle (one local and one BP forward/backward pass on the probe per log).

    Example:

    ```python
    >>> callback = SALDiagnosticsCallback(*probe_batch(train_dataset, size=256))
    >>> trainer = SALTrainer(model=model, args=args, train_dataset=train_dataset, callbacks=[callback])
    ```
    """

    def __init__(self, pixel_values: torch.Tensor, labels: torch.Tensor, alignment: bool = True) -> None:
        if pixel_values.shape[0] != labels.shape[0] or pixel_values.shape[0] == 0:
            raise ValueError(
                f"The probe batch needs as many labels as inputs (at least one); got pixel_values of shape "
                f"{tuple(pixel_values.shape)} and labels of shape {tuple(labels.shape)}."
            )
        self.pixel_values = pixel_values
        self.labels = labels
        self.alignment = alignment
        self.previous_areas: list[torch.Tensor] | None = None

    def probe_areas(self, model: SALForImageClassification) -> list[torch.Tensor]:
        """The area of every probe sample at every router, (N,) each, in eval mode."""
        with torch.no_grad():
            areas = model(pixel_values=self.pixel_values.to(model.device), return_areas=True).areas
        return [areas[index].cpu() for index, _ in routed_layers(model)]

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if isinstance(model, SALForImageClassification):
            was_training = model.training
            model.eval()
            self.previous_areas = self.probe_areas(model)
            model.train(was_training)

    def diagnostics(self, model: SALForImageClassification, rule: LocalLearningRule | None) -> dict[str, float]:
        """The values to log now. Called by [`SALAreaHealthCallback`] at every training log, before it resets the
        area loads."""
        if not isinstance(model, SALForImageClassification):
            return {}
        logs: dict[str, float] = {}
        for index, router in enumerate(model.routers):
            load = router.logged_load
            total = float(load.sum())
            if total > 0:
                width = len(str(router.num_areas - 1))
                for k, share in enumerate((load / total).tolist()):
                    logs[f"area/router_{index}/share_{k:0{width}d}"] = round(share, 4)
        was_training = model.training
        model.eval()
        try:
            areas = self.probe_areas(model)
            if self.previous_areas is not None:
                for index, (now, before) in enumerate(zip(areas, self.previous_areas)):
                    logs[f"area/router_{index}/churn"] = round(float((now != before).float().mean()), 4)
            self.previous_areas = areas
            if self.alignment and rule is not None:
                x, y = self.pixel_values.to(model.device), self.labels.to(model.device)
                for layer, angle in enumerate(alignment_angles(model, rule, x, y)):
                    logs[f"alignment/layer_{layer}"] = round(angle, 3)
        finally:
            model.train(was_training)
        return logs


__all__ = ["SALDiagnosticsCallback", "alignment_angles", "probe_batch"]
