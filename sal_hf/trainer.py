"""SALTrainer: `transformers.Trainer` with SAL's region-local update in place of backpropagation."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from .learning_rule import LocalLearningRule
from .modeling_sal import ACTIVATIONS, SALAreaLinear, SALPreTrainedModel


class SALRoutingCallback(TrainerCallback):
    """Applies the routing statistics (running input mean, balancing bias) once per optimizer step, so that
    gradient accumulation over micro-batches routes exactly like one large batch."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if isinstance(model, SALPreTrainedModel):
            model.update_routing_statistics()


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
      groups with the learning rate scaled (schedulers then scale every group alike).
    - `log`: adds area health (per-router min / max share of samples, dead areas) to the training logs.
    - A [`SALRoutingCallback`] is added to apply routing statistics after every optimizer step.

    Everything else, the training loop included, is inherited unchanged.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        core = self.accelerator.unwrap_model(self.model)
        if not isinstance(core, SALPreTrainedModel):
            raise ValueError(
                f"SALTrainer trains SAL models; got {type(core).__name__}. Use transformers.Trainer instead."
            )
        config = core.config
        self.learning_rule = None
        if config.learning_rule != "bp":
            self.learning_rule = LocalLearningRule(
                config.learning_rule,
                feedback_mode=config.feedback,
                activation=ACTIVATIONS[config.hidden_act],
                area_norm=config.area_update_norm,
                num_areas=config.num_areas,
                routing_loss_weight=config.routing_loss_weight,
            )
            # The surrogate is a per-batch mean: Trainer divides it by the accumulation steps.
            self.loss_is_scaled_for_ga = False
        self.add_callback(SALRoutingCallback())

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
            # The output layer (and its areas) is the last entry of `areas`.
            loss = self.learning_rule(
                loss=outputs.loss,
                logits=outputs.logits,
                labels=inputs["labels"],
                pre_activations=outputs.pre_activations,
                areas=outputs.areas,
                feedback=core.feedback.matrices(),
                routing_losses=outputs.routing_losses,
            )
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
        scale = core.config.area_lr_scale
        if user_optimizer or scale == 1.0:
            return optimizer
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
        return optimizer

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            core = self.accelerator.unwrap_model(self.model)
            logs.update(core.area_health())
        super().log(logs, start_time)


__all__ = ["SALTrainer", "SALRoutingCallback"]
