"""What the optimizer side of SAL needs: area parameter groups, the unselected-area hook, in-place SGD.

Pure torch; knows the area layer (``areas.SALAreaLinear``), never the reverse. A functional core:

- :func:`lr_scaled_parameters` and :func:`scale_learning_rates`: the parameters a config's learning-rate multipliers
  apply to (the areas, :func:`area_parameters`, at ``area_lr_scale``; the learned routing projections,
  :func:`router_parameters`, at ``router_lr_scale``), each moved into param groups of their own at the scaled lr;
  :func:`scale_applied` tells whether a user's own optimizer already does that;
- :func:`clear_unselected_area_grads` / :func:`reset_area_selection`: before a step, drop the zero gradients that
  the masked kernel hands unselected areas, and those of areas whose rows carried no error, so momentum and weight
  decay cannot move them;
- :func:`in_place_sgd_problems` and :func:`in_place_area_sgd`: plain SGD applied to every area inside the backward
  pass, installed on the layers through their ``area_linear`` hook for the duration of one step;

and a thin wrapper, :func:`hook_unselected_area_grads`, that registers the clearing on any ``torch.optim.Optimizer``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from .areas import SALAreaLinear, process_count
from .feedback import FeedbackMatrices
from .routing import AreaRouter


def area_layers(model: nn.Module) -> list[SALAreaLinear]:
    """Every area layer of ``model`` with more than one area (any module: a DDP wrapper, a transformer, ...)."""
    return [m for m in model.modules() if isinstance(m, SALAreaLinear) and m.num_areas > 1]


def area_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the selective path: area layers with K > 1, and learned per-area feedback matrices
    (``feedback_scope="area"``), whose rows also learn from the few samples of one area: the ones ``area_lr_scale``
    applies to. (At the full lr, AdamW's step of about lr per entry whatever an area's sample count made per-area
    Kolen-Pollack matrices random-walk: SAL-16 on Digits trained to 10-30% after 5 epochs, 88-89% at lr / K.)"""
    params = [p for layer in area_layers(model) for p in layer.parameters()]
    per_area_feedback = [m for m in model.modules() if isinstance(m, FeedbackMatrices) and m.num_areas > 1]
    return params + [p for m in per_area_feedback for p in m.parameters()]


def router_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learned routing projections (``router="learned"``): the parameters ``router_lr_scale`` applies to."""
    return [m.projection for m in model.modules() if isinstance(m, AreaRouter) and m.learned]


def scale_learning_rates(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], scale: float) -> None:
    """Move ``params`` out of every param group into a group of their own, same options, ``lr * scale``;
    schedulers then scale every group alike."""
    chosen = {id(p) for p in params}
    for group in list(optimizer.param_groups):
        moved = [p for p in group["params"] if id(p) in chosen]
        if moved:
            group["params"] = [p for p in group["params"] if id(p) not in chosen]
            options = {key: value for key, value in group.items() if key != "params"}
            optimizer.add_param_group({**options, "params": moved, "lr": group["lr"] * scale})


def scale_area_learning_rates(optimizer: torch.optim.Optimizer, model: nn.Module, scale: float) -> None:
    """The area parameters in groups of their own at ``lr * scale``; the shared paths, routers and K = 1 layers keep
    their group's lr."""
    scale_learning_rates(optimizer, area_parameters(model), scale)


def lr_scaled_parameters(model: nn.Module, config) -> dict[str, tuple[float, list[nn.Parameter]]]:
    """The learning-rate multipliers of ``config`` (a `SALConfig` or `SALTransformerConfig`) that change something in
    ``model``, each with the parameters it scales: ``area_lr_scale`` (:func:`area_parameters`) and
    ``router_lr_scale`` (:func:`router_parameters`); a multiplier of 1, or one without parameters here (no router
    group for ``router="random"`` or K = 1), is left out."""
    scales = {
        "area_lr_scale": (config.effective_area_lr_scale, area_parameters(model)),
        "router_lr_scale": (config.router_lr_scale, router_parameters(model)),
    }
    return {name: (scale, params) for name, (scale, params) in scales.items() if scale != 1.0 and params}


def scale_applied(
    optimizer: torch.optim.Optimizer, params: list[nn.Parameter], scale: float, other: list[nn.Parameter] = ()
) -> bool:
    """Whether ``optimizer`` already gives every parameter of ``params`` ``scale`` times the lr of the base
    parameters: those in neither ``params`` nor ``other`` (another multiplier's parameters). Reads each group's
    ``initial_lr`` once a scheduler has set it, else its ``lr``. False when that cannot be told: no base parameter,
    several base lrs, or a parameter of ``params`` missing from the optimizer."""
    chosen, skipped = {id(p) for p in params}, {id(p) for p in other}
    scaled, base, seen = set(), set(), set()
    for group in optimizer.param_groups:
        lr = group.get("initial_lr", group["lr"])
        for p in group["params"]:
            seen.add(id(p))
            if id(p) in chosen:
                scaled.add(lr)
            elif id(p) not in skipped:
                base.add(lr)
    if len(base) != 1 or not chosen <= seen:
        return False
    (lr,) = base
    return all(abs(value - lr * scale) <= 1e-6 * abs(lr * scale) + 1e-12 for value in scaled)


class _InPlaceSGDLinear(torch.autograd.Function):
    """``x W^T + b`` whose backward applies plain SGD to ``W`` and ``b`` in place and hands them no ``.grad``:
    ``W <- (1 - lr wd) W - lr g^T x`` in one ``addmm_`` (with weight decay in an area of a K > 1 layer, a scaling
    first; no gradient tensor is written or read back), likewise
    ``b``, with ``lr`` and ``wd`` read from their optimizer param groups at that moment (so schedulers apply). The
    input gradient is computed from ``W`` before the update. With ``idle_rule`` (areas of K > 1 layers), rows that
    all carried no error (``g = 0``) decay nothing either, as :func:`clear_unselected_area_grads` drops such an area's
    gradient on the optimizer path. See :func:`in_place_area_sgd`."""

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, weight: nn.Parameter, bias: nn.Parameter, groups: tuple[dict, dict], idle_rule: bool
    ):
        ctx.save_for_backward(x)
        ctx.weight, ctx.bias, ctx.groups, ctx.idle_rule = weight, bias, groups, idle_rule
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        weight, bias = ctx.weight, ctx.bias
        grad = grad.to(weight.dtype)  # bf16 under autocast; the update is applied in the weights' dtype
        grad_x = (grad @ weight).to(x.dtype) if ctx.needs_input_grad[0] else None
        weight_group, bias_group = ctx.groups
        with torch.no_grad():
            # torch.optim.SGD without momentum: p <- p - lr (grad + wd p). With the idle rule no decay either when no
            # row carried error, decided on the device (no host sync).
            decays = weight_group["weight_decay"] or bias_group["weight_decay"]
            moved = grad.ne(0).any() if ctx.idle_rule and decays else None
            lr, decay = weight_group["lr"], weight_group["weight_decay"]
            if decay and moved is not None:
                weight.mul_(torch.where(moved, 1.0 - lr * decay, 1.0))
                weight.addmm_(grad.t(), x.to(weight.dtype), alpha=-lr)
            else:
                weight.addmm_(grad.t(), x.to(weight.dtype), beta=1.0 - lr * decay, alpha=-lr)
            lr, decay = bias_group["lr"], bias_group["weight_decay"]
            if decay:
                bias.mul_(1.0 - lr * decay if moved is None else torch.where(moved, 1.0 - lr * decay, 1.0))
            bias.add_(grad.sum(0), alpha=-lr)
        return grad_x, None, None, None, None


def clear_unselected_area_grads(model: nn.Module) -> int:
    """Before an optimizer step: set ``.grad = None`` on every area that takes no step, and start a new record. An
    area takes no step when the masked forwards since the last call did not select it (the masked implementation
    gives it an all-zero gradient), or, in a layer with K > 1 areas, when its gradient is exactly zero although rows
    selected it: every row it took carried no error (a token labelled -100, the last token of a causal LM, a
    classifier's non-pooled tokens in the local modes; also units dead for all its rows). Without this, momentum and
    weight decay would move such areas. (A K = 1 layer, a dense one, keeps the optimizer's usual behaviour.)

    [`SALTrainer`] registers it on its optimizer (`register_step_pre_hook`); a hand-written loop calls it between
    `backward` and `optimizer.step()`, once per optimizer step (after all micro-batches of gradient accumulation).
    One host sync for the whole model (two when a selected area's bias gradient is zero, common with error-free
    tokens: then its weight gradient decides). Under `torch.distributed`, the records are combined over all
    processes first (gradients were averaged over them, so an area selected on any process has a real gradient; a
    sharded gradient is nonzero when any process's shard is); every process must call it at the same step, as it
    does in an optimizer step.

    Args:
        model: a SAL model, or any module containing ``SALAreaLinear`` layers (a DDP wrapper, for instance).

    Returns:
        The number of area parameters whose gradient was cleared.
    """
    layers = [m for m in model.modules() if isinstance(m, SALAreaLinear)]
    if not layers:
        return 0
    areas = [(weight, bias) for layer in layers for weight, bias in zip(layer.weights, layer.biases)]
    grads = [param.grad for pair in areas for param in pair if param.grad is not None]
    # No gradient: no backward since the last step, or an engine that keeps them elsewhere. (Several processes go on
    # to the collective all the same: under FSDP another process's shard may hold gradients.)
    if not grads and process_count() == 1:
        reset_area_selection(model)
        return 0
    device = _collective_device(layers, grads, areas)
    selected = torch.cat(
        [
            layer.selected_areas.to(device)
            if layer.selected_areas is not None
            else torch.ones(layer.num_areas, dtype=torch.bool, device=device)
            for layer in layers
        ]
    )
    # An area's bias gradient sums the error of the rows it took: zero when none carried error. Cheap, so read first.
    flags = torch.stack([selected, _nonzero([bias for _, bias in areas], device)])
    flags = _combined(flags).tolist()  # the one host sync
    # A K = 1 layer counts as moved: the zero-gradient rule is the areas'.
    dense = [layer.num_areas == 1 for layer in layers for _ in range(layer.num_areas)]
    keep = [chosen and (moved or one) for chosen, moved, one in zip(*flags, dense)]
    unsure = [i for i, (chosen, kept) in enumerate(zip(flags[0], keep)) if chosen and not kept]
    if unsure:  # a zero bias gradient, so the weight gradient decides
        moved = _combined(_nonzero([areas[i][0] for i in unsure], device)).tolist()
        for i, weight_moved in zip(unsure, moved):
            keep[i] = bool(weight_moved)
    cleared = 0
    for (weight, bias), kept in zip(areas, keep):
        for param in () if kept else (weight, bias):
            if param.grad is not None:
                param.grad = None
                cleared += 1
    reset_area_selection(model)
    return cleared


def _nonzero(params: list[nn.Parameter], device: torch.device) -> torch.Tensor:
    """(n,) bool on ``device``: whether each parameter's gradient (this process's shard of it: FSDP2's DTensor) has
    a nonzero entry (NaN counts). No host sync, and no copy of the gradients."""
    flags = []
    for param in params:
        grad = param.grad
        if grad is None:
            flags.append(torch.zeros((), dtype=torch.bool, device=device))
            continue
        local = grad.to_local() if hasattr(grad, "to_local") else grad
        flags.append(local.ne(0).any().to(device))
    return torch.stack(flags)


def _collective_device(layers: list[SALAreaLinear], grads: list[torch.Tensor], areas: list) -> torch.device:
    """Where the flags are combined: the device the forward recorded its selection on (the model's, for NCCL; FSDP2
    may offload gradients to the CPU), else that of the gradients, else of the parameters."""
    for layer in layers:
        if layer.selected_areas is not None:
            return layer.selected_areas.device
    return grads[0].device if grads else areas[0][0].device


def _combined(flags: torch.Tensor) -> torch.Tensor:
    """``flags`` OR-ed over every process (no-op in one process), as int32."""
    flags = flags.to(torch.int32)
    if process_count() > 1:
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    return flags


def reset_area_selection(model: nn.Module) -> None:
    """Forget the areas recorded since the last optimizer step (see [`clear_unselected_area_grads`]). For steps
    the optimizer skipped, e.g. when fp16 loss scaling found an overflow: [`SALTrainer`] calls it after every step."""
    for module in model.modules():
        if isinstance(module, SALAreaLinear):
            module.selected_areas = None


def hook_unselected_area_grads(optimizer: torch.optim.Optimizer, model: nn.Module) -> torch.utils.hooks.RemovableHandle:
    """Register :func:`clear_unselected_area_grads` as a step pre-hook of ``optimizer`` (the thin wrapper a trainer
    or a hand-written loop uses)."""

    def clear_before_step(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        clear_unselected_area_grads(model)

    return optimizer.register_step_pre_hook(clear_before_step)


def in_place_sgd_problems(optimizer: torch.optim.Optimizer) -> list[str]:
    """Why ``optimizer`` cannot be applied per area inside the backward (empty when it can: plain SGD)."""
    if not isinstance(optimizer, torch.optim.SGD):
        return [f"optimizer {type(optimizer).__name__}: use optim='sgd'"]
    for group in optimizer.param_groups:
        if group["momentum"] or group["nesterov"] or group["maximize"]:
            return [
                f"SGD with momentum={group['momentum']}, nesterov={group['nesterov']}, maximize={group['maximize']}: "
                "use plain SGD (momentum 0)"
            ]
    return []


@contextlib.contextmanager
def in_place_area_sgd(model: nn.Module, optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """While open, training forwards of ``model`` run their areas with plain SGD applied in place during the
    backward pass (lr and weight decay of each area's param group, looked up now: Accelerate and checkpoint
    resumption replace the group dicts); the areas get no ``.grad``. Raises if an area is not in the optimizer."""
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    layers = [m for m in model.modules() if isinstance(m, SALAreaLinear)]  # K = 1 layers too: one addmm_ each
    try:
        for layer in layers:
            if any(id(p) not in group_of for p in layer.parameters()):
                raise ValueError(
                    f"in_place_area_update: a parameter of {layer} is not in the optimizer; add it, or train without "
                    "in_place_area_update."
                )
            groups = [(group_of[id(w)], group_of[id(b)]) for w, b in zip(layer.weights, layer.biases)]

            def area_linear(x, weight, bias, k, groups=groups, idle_rule=layer.num_areas > 1):
                return _InPlaceSGDLinear.apply(x, weight, bias, groups[k], idle_rule)

            layer.area_linear = area_linear
        yield
    finally:
        for layer in layers:
            layer.area_linear = None


__all__ = [
    "area_layers",
    "area_parameters",
    "clear_unselected_area_grads",
    "hook_unselected_area_grads",
    "in_place_area_sgd",
    "in_place_sgd_problems",
    "reset_area_selection",
    "lr_scaled_parameters",
    "router_parameters",
    "scale_area_learning_rates",
    "scale_learning_rates",
]
