"""SALTrainer: `transformers.Trainer` with SAL's region-local update in place of backpropagation."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.utils import logging

from .configuration_sal import SALConfig
from .learning_rule import LocalLearningRule
from .modeling_sal import (
    ACTIVATIONS,
    SALAreaLinear,
    SALPreTrainedModel,
    clear_unselected_area_grads,
    reset_area_selection,
)


class SALRoutingCallback(TrainerCallback):
    """Applies the routing statistics (running input mean, balancing bias) once per optimizer step, so that
    gradient accumulation over micro-batches routes exactly like one large batch, and starts a new record of
    the selected areas (see [`clear_unselected_area_grads`]).

    Args:
        accelerator: when given, the statistics are summed over all processes first (`accelerator.reduce`), so
            every rank moves its routing state identically and routes like a single process with the global batch.
    """

    def __init__(self, accelerator: Accelerator | None = None) -> None:
        self.accelerator = accelerator

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not isinstance(model, SALPreTrainedModel):
            return
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            for router in model.routers:
                for buffer in (router.pending_input_sum, router.pending_load):
                    buffer.copy_(self.accelerator.reduce(buffer, reduction="sum"))
        model.update_routing_statistics()
        # The optimizer's pre-step hook has used the areas' selection record; a step the optimizer skipped (fp16
        # overflow) has not, and its record must not leak into the next step.
        reset_area_selection(model)


logger = logging.get_logger(__name__)


def local_learning_rule(config: SALConfig) -> LocalLearningRule:
    """The local rule a (non-`bp`) config trains with: what `SALTrainer` and hand-written loops call."""
    return LocalLearningRule(
        config.learning_rule,
        feedback_mode=config.feedback_mode,
        activation=ACTIVATIONS[config.hidden_act],
        area_norm=config.area_update_norm,
        num_areas=config.num_areas,
        routing_loss_weight=config.routing_loss_weight,
        residual=config.residual,
        residual_scale=config.residual_scale,
    )


class SALInterruptCallback(TrainerCallback):
    """Makes Ctrl-C (SIGINT) safe: the first one lets the current optimizer step finish, saves a checkpoint
    (unless `save_strategy="no"`) and stops training normally, so no checkpoint is ever half written by the
    interrupt; a second Ctrl-C aborts at once. Only installed from the main thread. Under `torchrun` every rank
    of the terminal's process group receives the signal and stops at the same step."""

    def __init__(self) -> None:
        self.interrupted = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        self.interrupted = True
        signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
        logger.warning("Interrupted: finishing this step, saving a checkpoint and stopping. Ctrl-C again aborts now.")

    def on_train_begin(self, args, state, control, **kwargs):
        self.interrupted = False
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        if self.interrupted:
            control.should_training_stop = True
            control.should_save = args.save_strategy != "no"
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous)
        self._previous = None


class SALTrainer(Trainer):
    """[`~transformers.Trainer`] for SAL models.

    The only changes w.r.t. [`~transformers.Trainer`]:

    - `compute_loss`: with `learning_rule` `sal`, `dfa` or `fa`, runs the model with `local=True` and returns
      a surrogate whose value is the cross-entropy loss and whose gradient is the local update (see
      `learning_rule.py`). Trainer's own `training_step` then calls `accelerator.backward` on it once, so
      gradient accumulation, clipping, schedulers, mixed precision and DDP are Trainer's, unchanged. With
      `bp` it is Trainer's `compute_loss`. A NaN or infinite loss stops training with an error before any
      update is applied, so the weights and the saved checkpoints stay as they were.
    - `create_optimizer`: with `config.area_lr_scale != 1`, moves the area parameters into their own parameter
      groups with the learning rate scaled (schedulers then scale every group alike). On every optimizer, the
      user's included, registers [`clear_unselected_area_grads`] as a step pre-hook: areas that the masked
      implementation (`config.area_implementation`) handed a zero gradient but no sample selected get
      `.grad = None` before the step, as with the split implementation (a no-op there).
    - `training_step` (with `in_place_area_update=True` only): plain SGD is applied to every area's weight and bias
      inside the backward pass, in one `addmm_` per area, with the lr and weight decay of its param group, and the
      areas get no `.grad`: no gradient tensor is written and read back, and none is kept (about 25% faster steps
      and half the memory of a 16-area MLP on a CPU, docs/PERFORMANCE.md). The routers, norms and shared paths
      still go through the optimizer. The weights equal those of `optim="sgd"` (tested). It needs what applying
      each update at once allows: `optim="sgd"` without momentum, `max_grad_norm=0`, no gradient accumulation,
      one process, no fp16 loss scaling, no `torch_compile`; `create_optimizer` raises naming what to change
      otherwise.
    - `log`: adds area health (per-router min / max share of samples, dead areas) to the training logs, and
      the diagnostics of any [`SALDiagnosticsCallback`] (see `diagnostics.py`).
    - `create_model_card`: writes a SAL model card (learning rule, areas, routing, seeds, data, metrics, area
      utilisation, versions; see `model_card.py`) in place of Trainer's draft; `push_to_hub` uploads it.
    - A [`SALRoutingCallback`] is added to apply routing statistics after every optimizer step (summed over
      processes), and a [`SALInterruptCallback`] that turns Ctrl-C into "save a checkpoint and stop".

    Everything else, the training loop included, is inherited unchanged.

    Args:
        in_place_area_update: see `training_step` above (default False: the gradients go through the optimizer).
        *args, **kwargs: those of [`~transformers.Trainer`].
    """

    def __init__(self, *args: Any, in_place_area_update: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_place_area_update = in_place_area_update
        core = self.accelerator.unwrap_model(self.model)
        if not isinstance(core, SALPreTrainedModel):
            raise ValueError(
                f"SALTrainer trains SAL models; got {type(core).__name__}. Use transformers.Trainer instead."
            )
        config = core.config
        self.learning_rule = None
        if config.learning_rule != "bp":
            if self.args.label_smoothing_factor or self.compute_loss_func is not None:
                raise ValueError(
                    f"learning_rule={config.learning_rule!r} computes its own error signal from softmax cross-entropy; "
                    f"got label_smoothing_factor={self.args.label_smoothing_factor} and compute_loss_func="
                    f"{self.compute_loss_func!r}. Remove them, or train with learning_rule='bp'."
                )
            self.learning_rule = local_learning_rule(config)
            # The surrogate is a per-batch mean: Trainer divides it by the accumulation steps.
            self.loss_is_scaled_for_ga = False
        self.add_callback(SALRoutingCallback(self.accelerator))
        self.add_callback(SALInterruptCallback())

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        if self.learning_rule is None or not model.training:
            loss, outputs = super().compute_loss(
                model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
            )
        else:
            if "labels" not in inputs:
                raise ValueError(f"SAL training needs labels; the batch has only {sorted(inputs)}.")
            outputs = model(**inputs, local=True)
            core = self.accelerator.unwrap_model(model)
            loss = self.learning_rule.surrogate(outputs, inputs["labels"], core.feedback.matrices())
        if model.training and not torch.isfinite(loss.detach()).all():
            raise FloatingPointError(
                f"Training loss is {loss.item()} at step {self.state.global_step} (epoch {self.state.epoch}); "
                "stopped before applying the update, so the model and saved checkpoints are unchanged. Lower "
                "learning_rate, set max_grad_norm, or check the inputs for NaN/Inf."
            )
        return (loss, outputs) if return_outputs else loss

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        user_optimizer = self.optimizer is not None
        optimizer = super().create_optimizer(model)
        core = self.accelerator.unwrap_model(self.model)
        # Accelerate's wrapper (a second `train()` gets it back) keeps the torch optimizer in `.optimizer`.
        torch_optimizer = getattr(optimizer, "optimizer", optimizer)
        has_areas = any(isinstance(m, SALAreaLinear) and m.num_areas > 1 for m in core.modules())
        if has_areas and not isinstance(torch_optimizer, torch.optim.Optimizer):
            logger.warning(
                f"{type(torch_optimizer).__name__} is not a torch.optim.Optimizer: SALTrainer cannot hook its step. With "
                "area_implementation='masked' (or 'auto' on CUDA) unselected areas get zero gradients that it will "
                "apply; set area_implementation='split' or call clear_unselected_area_grads(model) before each step."
            )
        elif has_areas and getattr(self, "_area_hook_optimizer", None) is not torch_optimizer:

            def clear_before_step(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
                clear_unselected_area_grads(core)

            torch_optimizer.register_step_pre_hook(clear_before_step)
            self._area_hook_optimizer = torch_optimizer
        scale = core.config.area_lr_scale
        if not user_optimizer and scale != 1.0:
            self._scale_area_learning_rates(core, optimizer, scale)
        if self.in_place_area_update:
            self._check_in_place(torch_optimizer)
        return optimizer

    @staticmethod
    def _scale_area_learning_rates(core: SALPreTrainedModel, optimizer: torch.optim.Optimizer, scale: float) -> None:
        # Area parameters (K > 1) of every layer; the shared path, routers and K = 1 layers keep the base lr.
        areas = {
            id(p) for m in core.modules() if isinstance(m, SALAreaLinear) and m.num_areas > 1 for p in m.parameters()
        }
        for group in list(optimizer.param_groups):
            moved = [p for p in group["params"] if id(p) in areas]
            if moved:
                group["params"] = [p for p in group["params"] if id(p) not in areas]
                options = {key: value for key, value in group.items() if key != "params"}
                optimizer.add_param_group({**options, "params": moved, "lr": group["lr"] * scale})

    def _check_in_place(self, optimizer: torch.optim.Optimizer) -> None:
        """Raise unless the run allows `in_place_area_update` (plain SGD, nothing that needs every gradient first)."""
        problems = []
        if not isinstance(optimizer, torch.optim.SGD):
            problems.append(f"optimizer {type(optimizer).__name__}: use optim='sgd'")
        else:
            for group in optimizer.param_groups:
                if group["momentum"] or group["nesterov"] or group["maximize"]:
                    problems.append(
                        f"SGD with momentum={group['momentum']}, nesterov={group['nesterov']}, "
                        f"maximize={group['maximize']}: use plain SGD (momentum 0)"
                    )
                    break
        if self.args.max_grad_norm:
            problems.append(
                f"max_grad_norm={self.args.max_grad_norm}: set max_grad_norm=0 (clipping needs every gradient first)"
            )
        if self.args.gradient_accumulation_steps != 1:
            problems.append(f"gradient_accumulation_steps={self.args.gradient_accumulation_steps}: use 1")
        if self.args.world_size > 1:
            problems.append(f"{self.args.world_size} processes: train in one process")
        if self.args.fp16:
            problems.append("fp16=True (its loss scaling): use bf16 or fp32")
        if self.args.torch_compile:
            problems.append("torch_compile=True (not supported with an update inside the backward): drop it")
        if problems:
            raise ValueError(
                "in_place_area_update=True applies plain SGD to every area inside the backward pass, so it cannot be "
                "combined with: " + "; ".join(problems) + ". Fix these or set in_place_area_update=False."
            )

    @contextlib.contextmanager
    def in_place_area_updates(self, model: nn.Module):
        """With `in_place_area_update=True`: while open, training forwards of `model` run their areas with the SGD
        update applied in place during the backward pass (lr and weight decay of each area's param group, looked up
        now: Accelerate and checkpoint resumption replace the group dicts). `training_step` opens it; a hand-written
        loop around `compute_loss` and `backward` may too. A no-op otherwise."""
        layers = []
        if self.in_place_area_update:
            group_of = {id(p): group for group in self.optimizer.param_groups for p in group["params"]}
            layers = [m for m in self.accelerator.unwrap_model(model).modules() if isinstance(m, SALAreaLinear)]
        try:
            for layer in layers:
                if any(id(p) not in group_of for p in layer.parameters()):
                    raise ValueError(
                        f"in_place_area_update: a parameter of {layer} is not in the optimizer; add it, or train "
                        "without in_place_area_update."
                    )
                layer.in_place_groups = [
                    (group_of[id(w)], group_of[id(b)]) for w, b in zip(layer.weights, layer.biases)
                ]
            yield
        finally:
            for layer in layers:
                layer.in_place_groups = None

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        # Switched on for Trainer's own step only, never for the model outside it.
        with self.in_place_area_updates(model):
            return super().training_step(model, inputs, num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            core = self.accelerator.unwrap_model(self.model)
            if self.accelerator.num_processes > 1:
                for router in core.routers:
                    router.logged_load.copy_(self.accelerator.reduce(router.logged_load, reduction="sum"))
            from .diagnostics import SALDiagnosticsCallback  # the diagnostics build on this module

            # Before `area_health`, which resets the area loads that the diagnostics read.
            for callback in self.callback_handler.callbacks:
                if isinstance(callback, SALDiagnosticsCallback):
                    logs.update(callback.diagnostics(core, self.learning_rule))
            logs.update(core.area_health())
        super().log(logs, start_time)

    def create_model_card(self, **kwargs: Any) -> None:
        """Write `README.md` in `args.output_dir`. Takes [`~Trainer.create_model_card`]'s arguments (`dataset`,
        `model_name`, `license`, `tags`, ...) and `command`, the command line that trained the model. They are
        remembered, so the card that `push_to_hub` (or `save_model` with `push_to_hub=True`) rewrites keeps them."""
        self.model_card_kwargs = {**getattr(self, "model_card_kwargs", {}), **kwargs}
        if not self.is_world_process_zero():
            return
        from .model_card import sal_model_card

        os.makedirs(self.args.output_dir, exist_ok=True)
        with open(os.path.join(self.args.output_dir, "README.md"), "w", encoding="utf-8") as file:
            file.write(sal_model_card(self, **self.model_card_kwargs))


__all__ = ["SALTrainer", "SALRoutingCallback", "SALInterruptCallback"]
