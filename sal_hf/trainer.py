"""SALTrainer: `transformers.Trainer` with SAL's region-local update in place of backpropagation."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

from .activations import ACTIVATIONS
from .block_rule import BlockLocalRule
from .configuration_sal import SALConfig
from .configuration_sal_transformer import SALTransformerConfig
from .learning_rule import LocalLearningRule
from .modeling_sal import SALPreTrainedModel, SALRoutingMixin
from .modeling_sal_transformer import SALTransformerForCausalLM
from .optim import (
    area_layers,
    hook_unselected_area_grads,
    in_place_area_sgd,
    in_place_sgd_problems,
    lr_scaled_parameters,
    reset_area_selection,
    scale_applied,
    scale_learning_rates,
)


# The model families SALTrainer trains (the MLP and the transformer) share the routing bookkeeping.
SAL_MODELS = SALRoutingMixin


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

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # What an earlier `train()` gathered and never applied (it stopped between a forward and its step).
        if isinstance(model, SAL_MODELS):
            model.discard_routing_statistics()
            reset_area_selection(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not isinstance(model, SAL_MODELS):
            return
        if self.accelerator is not None and self.accelerator.optimizer_step_was_skipped:
            # fp16 loss scaling found an overflow and skipped the step: the weights did not move, nor do the routers.
            model.discard_routing_statistics()
            reset_area_selection(model)
            return
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            for router in model.routers:
                for name in router.pending:
                    buffer = getattr(router, name)
                    buffer.copy_(self.accelerator.reduce(buffer, reduction="sum"))
        model.update_routing_statistics()
        # The optimizer's pre-step hook has used the areas' selection record; a step the optimizer skipped (fp16
        # overflow) has not, and its record must not leak into the next step.
        reset_area_selection(model)


logger = logging.get_logger(__name__)


class SALAreaHealthCallback(TrainerCallback):
    """Adds each router's area health (min / max share of the samples since its last report, dead areas; see
    `area_health`) to every training log, after the values of any [`SALDiagnosticsCallback`] among `callbacks` (they
    read the same loads). [`SALTrainer`] puts it first among its callbacks, so that every reporter (console,
    TensorBoard, `log_history`, ...) sees these values.

    Args:
        accelerator: the loads are summed over its processes first.
        learning_rule: the local rule, for the diagnostics' alignment angles (None for `bp`).
        callbacks: the trainer's callback list (read at every log, so callbacks added later count).
    """

    def __init__(self, accelerator: Accelerator, learning_rule: Any, callbacks: list[TrainerCallback]) -> None:
        self.accelerator = accelerator
        self.learning_rule = learning_rule
        self.callbacks = callbacks

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if not logs or "loss" not in logs or model is None:
            return
        core = self.accelerator.unwrap_model(model)
        if not isinstance(core, SAL_MODELS):
            return
        distributed = self.accelerator.num_processes > 1
        own = [router.logged_load.clone() for router in core.routers] if distributed else []
        if distributed:
            for router in core.routers:
                router.logged_load.copy_(self.accelerator.reduce(router.logged_load, reduction="sum"))
        from .diagnostics import SALDiagnosticsCallback  # the diagnostics build on this module

        values: dict[str, float] = {}
        for callback in self.callbacks:
            if isinstance(callback, SALDiagnosticsCallback):
                values.update(callback.diagnostics(core, self.learning_rule))
        values.update(core.area_health())  # resets the loads: last
        # A router that did not report (its window is under 4 K samples) keeps counting from this rank's own loads, so
        # that the next log's sum over the ranks counts each sample once.
        for router, load in zip(core.routers, own):
            if router.logged_load.any():
                router.logged_load.copy_(load)
        logs.update(values)
        # Trainer appended a copy of `logs` to the history just before calling the callbacks.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)


def local_learning_rule(config: SALConfig | SALTransformerConfig) -> LocalLearningRule | BlockLocalRule:
    """The local rule a (non-`bp`) config trains with: what `SALTrainer` and hand-written loops call."""
    if isinstance(config, SALTransformerConfig):
        return BlockLocalRule(
            config.learning_rule,
            error_source=config.error_source,
            routing_loss_weight=config.routing_loss_weight,
            feedback_alignment=config.effective_feedback_alignment,
            feedback_decay=config.feedback_decay,
        )
    return LocalLearningRule(
        config.learning_rule,
        feedback_mode=config.feedback_mode,
        activation=ACTIVATIONS[config.hidden_act],
        routing_loss_weight=config.routing_loss_weight,
        residual=config.residual,
        residual_scale=config.effective_residual_scale,
        feedback_alignment=config.effective_feedback_alignment,
        feedback_decay=config.feedback_decay,
        norm=config.norm,
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
            previous = signal.signal(signal.SIGINT, self._handle)
            # Never another SAL trainer's handler as the one to restore (it would outlive its training).
            self._previous = None if isinstance(getattr(previous, "__self__", None), SALInterruptCallback) else previous

    def restore(self) -> None:
        """Put back the SIGINT handler from before training (`on_train_end`, and `SALTrainer.train` when it raises)."""
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous)
        elif threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) == self._handle:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        self._previous = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.interrupted:
            control.should_training_stop = True
            control.should_save = args.save_strategy != "no"
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.restore()


class ShiftedLabelSmoothing:
    """Trainer's label smoothing with the labels shifted, as Trainer does for transformers' own causal LMs (it matches
    their class names, so `SALTransformerForCausalLM` would be scored against its own tokens). [`SALTrainer`] sets it
    as `compute_loss_func` for a `bp` causal LM with `label_smoothing_factor`: Trainer's own `compute_loss` then
    counts the tokens of the accumulated batch (`num_items_in_batch`) and processes as for its own models."""

    def __init__(self, label_smoother: Any) -> None:
        self.label_smoother = label_smoother

    def __call__(self, outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        return self.label_smoother(outputs, labels, shift_labels=True, num_items_in_batch=num_items_in_batch)


def saved_weight_shapes(checkpoint: str | os.PathLike) -> dict[str, tuple[int, ...]] | None:
    """Name -> shape of every tensor in a checkpoint folder's safetensors weights (one file or an index of shards),
    read from the file headers only; None when the folder has no safetensors weights."""
    from safetensors import SafetensorError, safe_open

    single, index = (os.path.join(checkpoint, name) for name in ("model.safetensors", "model.safetensors.index.json"))
    if os.path.isfile(single):
        files = [single]
    elif os.path.isfile(index):
        with open(index) as handle:
            files = sorted({os.path.join(checkpoint, f) for f in json.load(handle)["weight_map"].values()})
    else:
        return None
    shapes = {}
    try:
        for path in files:
            with safe_open(path, framework="pt") as weights:
                shapes.update({name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()})
    except (SafetensorError, OSError):
        return None  # unreadable: Trainer's load reports it
    return shapes


def routed_count(batch: dict[str, Any]) -> torch.Tensor | int:
    """The rows a batch's routers average their objective over: the unpadded tokens of a text batch (its 2-D
    `attention_mask`, else every token), the images of an image batch."""
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return mask.sum()
    tokens = batch.get("input_ids", batch.get("inputs_embeds"))
    if isinstance(tokens, torch.Tensor) and tokens.dim() >= 2:
        return tokens.shape[0] * tokens.shape[1]
    rows = batch.get("labels", batch.get("pixel_values"))
    return len(rows) if rows is not None else 0  # (a batch without labels is refused in compute_loss)


class SALTrainer(Trainer):
    """[`~transformers.Trainer`] for SAL models.

    The only changes w.r.t. [`~transformers.Trainer`]:

    - `compute_loss`: with `learning_rule` `sal`, `dfa` or `fa`, runs the model with `local=True` and returns
      a surrogate whose value is the cross-entropy loss and whose gradient is the local update (see
      `learning_rule.py`). Trainer's own `training_step` then calls `accelerator.backward` on it once, so
      gradient accumulation, clipping, schedulers, mixed precision and DDP are Trainer's, unchanged. With
      `bp` it is Trainer's `compute_loss`. A NaN or infinite loss stops training with an error before any
      update is applied, so the weights and the saved checkpoints stay as they were.
      With `router="claim"` it first scores the batch (`observe_claims`: one no-grad forward), which may claim
      areas before the batch trains (with several processes, on the loss averaged over them and the rows of all).
    - `create_optimizer`: with `config.effective_area_lr_scale != 1` (`1 / num_areas` unless set), moves the area
      parameters into their own parameter groups with the learning rate scaled, and likewise the learned routing
      projections with `config.router_lr_scale` (schedulers then scale every group alike). On every optimizer, the
      user's included, registers [`clear_unselected_area_grads`] as a step pre-hook: areas that no sample selected
      (the masked implementation, `config.area_implementation`, hands them a zero gradient) and areas whose rows all
      carried no error (tokens labelled -100, a classifier's non-pooled tokens) get `.grad = None` before the step,
      so momentum and weight decay leave them as they are.
    - `training_step` (with `in_place_area_update=True` only): plain SGD is applied to every area's weight and bias
      inside the backward pass, in one `addmm_` per area (and a scaling with weight decay), with the lr and weight decay of its param group, and the
      areas get no `.grad`: no gradient tensor is written and read back, and none is kept (about 25% faster steps
      and half the memory of a 16-area MLP on a CPU, docs/PERFORMANCE.md). The routers, norms and shared paths
      still go through the optimizer. The weights equal those of `optim="sgd"` (tested). It needs what applying
      each update at once allows: `optim="sgd"` without momentum, `max_grad_norm=0`, no gradient accumulation,
      one process, no fp16 loss scaling, no `torch_compile`; `create_optimizer` raises naming what to change
      otherwise.
    - `train`: before Trainer's, refuses to resume a checkpoint trained with other learning-rate groups
      (`area_lr_scale`, `router_lr_scale`) than this model's config gives, naming both values (`check_resume`);
      after it, even when it raised, puts back the Ctrl-C handler from before training.
    - `call_model_init`: each model that `model_init` makes (`hyperparameter_search` trials) gets its own config's
      local rule and checks.
    - With `label_smoothing_factor` and a `SALTransformerForCausalLM` under `bp`, `compute_loss_func` is
      [`ShiftedLabelSmoothing`]: smoothed against the next token (Trainer shifts the labels only for transformers' own
      causal LMs), with Trainer's token counting under gradient accumulation.
    - `create_model_card`: writes a SAL model card (learning rule, areas, routing, seeds, data, metrics, area
      utilisation, versions; see `model_card.py`) in place of Trainer's draft; `push_to_hub` uploads it.
    - Callbacks: [`SALRoutingCallback`] applies the routing statistics after every optimizer step (summed over
      processes), [`SALAreaHealthCallback`] adds area health (and the values of any [`SALDiagnosticsCallback`]) to
      every training log, and [`SALInterruptCallback`] turns Ctrl-C into "save a checkpoint and stop". The first two run
      before any callback of yours. A NaN loss drops the routing sums of its forward, so the model can train again.
    - It refuses what would silently break SAL across devices (several GPUs in one process, i.e. DataParallel;
      `area_update_norm="area"` with accumulation or several processes; FSDP1 with `use_orig_params=False`, whose
      flat parameters would drop the lr multipliers and the unselected-area rule) and switches FSDP runs with several processes to the masked area kernel (`prepare_areas_for_fsdp`).

    Everything else, the training loop included, is inherited unchanged.

    Args:
        in_place_area_update: see `training_step` above (default False: the gradients go through the optimizer).
        *args, **kwargs: those of [`~transformers.Trainer`].
    """

    def __init__(self, *args: Any, in_place_area_update: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._users_optimizer = self.optimizer is not None  # `optimizers=(optimizer, scheduler)`
        self.in_place_area_update = in_place_area_update
        self._health = SALAreaHealthCallback(self.accelerator, None, self.callback_handler.callbacks)
        self._set_up_for(self.accelerator.unwrap_model(self.model))
        # First of all callbacks: the routing state is complete before any other callback's `on_step_end` (one that
        # saves or snapshots the model), and every reporter (console, TensorBoard, ...) sees the health values.
        self.callback_handler.callbacks.insert(0, SALRoutingCallback(self.accelerator))
        self.callback_handler.callbacks.insert(0, self._health)
        self.add_callback(SALInterruptCallback())

    def _set_up_for(self, core: nn.Module) -> None:
        """The learning rule and the checks of a model's config: at `__init__`, and for each model `model_init`
        makes (`hyperparameter_search` trials may change the config)."""
        if not isinstance(core, SAL_MODELS):
            raise ValueError(
                f"SALTrainer trains SAL models; got {type(core).__name__}. Use transformers.Trainer instead."
            )
        config = core.config
        self.learning_rule = None
        self.loss_is_scaled_for_ga = type(self).loss_is_scaled_for_ga  # the class's (Trainer's: None, it decides)
        if isinstance(self.compute_loss_func, ShiftedLabelSmoothing):
            self.compute_loss_func = None  # set below for an earlier model (`model_init`)
        smoothing = self.label_smoother is not None and self.compute_loss_func is None
        if config.learning_rule == "bp" and smoothing and isinstance(core, SALTransformerForCausalLM):
            self.compute_loss_func = ShiftedLabelSmoothing(self.label_smoother)
        if config.learning_rule != "bp":
            if self.args.label_smoothing_factor or self.compute_loss_func is not None:
                raise ValueError(
                    f"learning_rule={config.learning_rule!r} computes its own error signal from softmax cross-entropy; "
                    f"got label_smoothing_factor={self.args.label_smoothing_factor} and compute_loss_func="
                    f"{self.compute_loss_func!r}. Remove them, or train with learning_rule='bp'."
                )
            self.learning_rule = local_learning_rule(config)
            # The surrogate is a per-batch mean (the causal LM's error: see `_window_loss_kwargs`): Trainer divides
            # it by the accumulation steps.
            self.loss_is_scaled_for_ga = False
        self._health.learning_rule = self.learning_rule
        self._check_parallelism(core)
        self._check_arguments(core)

    def _check_arguments(self, core: nn.Module) -> None:
        """TrainingArguments that this model cannot honour (refused), or that would cost far more than they give
        (warned about)."""
        if self.args.neftune_noise_alpha is not None and core.get_input_embeddings() is None:
            raise ValueError(
                f"neftune_noise_alpha={self.args.neftune_noise_alpha}: NEFTune adds noise to token embeddings, and "
                f"{type(core).__name__} has none. Remove neftune_noise_alpha (it is for the text models)."
            )
        # (The transformer's split kernel settles after two compiles: dynamic shapes. The MLP's did not.)
        mlp = isinstance(core, SALPreTrainedModel)
        split = [
            layer for layer in area_layers(core) if layer.num_areas > 1 and not layer.uses_masked(self.args.device)
        ]
        if self.args.torch_compile and mlp and split:
            logger.warning(
                "torch_compile=True with the split area kernel (area_implementation='split', or 'auto' off CUDA): its "
                "per-area matmul sizes change with every batch, so torch.compile recompiles each step until its "
                "recompile limit and then runs eagerly. Build the model with area_implementation='masked' to compile."
            )

    def call_model_init(self, trial: Any = None) -> nn.Module:
        """[`~transformers.Trainer.call_model_init`], then the learning rule and checks of the new model's config."""
        model = super().call_model_init(trial)
        if hasattr(self, "_health"):  # not the call inside Trainer's `__init__` (SALTrainer's sets up after it)
            self._set_up_for(model)
        return model

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        """[`~transformers.Trainer.train`], after refusing a checkpoint to resume that cannot continue with this model:
        another architecture's weights, or other learning-rate groups (`area_lr_scale`, `router_lr_scale`); see
        `check_resume`."""
        if resume_from_checkpoint and self.model_init is None:
            self.check_resume(resume_from_checkpoint)
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:  # `on_train_end` does not run when training raises: the Ctrl-C handler must not outlive it
            for callback in self.callback_handler.callbacks:
                if isinstance(callback, SALInterruptCallback):
                    callback.restore()

    def check_resume(self, checkpoint: str | os.PathLike | bool) -> None:
        """Raise a `ValueError` naming the values and the fix, before anything loads, when `checkpoint` (or, for True,
        the last one in `output_dir`) cannot continue with this model:

        - its weights are another architecture's (other or more tensors, other shapes: `saved_weight_shapes`), where
          Trainer's non-strict load would overwrite part of the model and torch then fail on the optimizer's groups;
        - it was trained with other learning-rate groups than this model's config gives it (what
          `lr_scaled_parameters` returns under each config): its optimizer state holds other parameter groups, or
          other learning rates that would silently override the config's. A checkpoint saved before
          `router_lr_scale` existed trained its routers at the full lr, and its config loads so
          (`with_saved_defaults`). Skipped with an optimizer of your own (SALTrainer applies no multiplier to it).

        Skipped with a `model_init` (the model is made inside `train`)."""
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
        if not checkpoint or not os.path.isdir(checkpoint):
            return  # Trainer reports a missing checkpoint itself
        if not os.path.isfile(os.path.join(checkpoint, "config.json")):
            logger.warning(
                f"{checkpoint} has no config.json: SALTrainer cannot check that it was trained with this model's "
                "area_lr_scale and router_lr_scale, so a mismatch shows only as torch's 'different number of parameter "
                "groups' when the optimizer loads."
            )
            return
        core = self.accelerator.unwrap_model(self.model)
        saved_config = type(core.config).from_pretrained(checkpoint)
        self._check_resumed_architecture(core, checkpoint, saved_config)
        # optimizer.pt / .bin, FSDP's optimizer_0, XLA's rank0-of-N-optimizer.pt, DeepSpeed's global_step*/
        if not any("optimizer" in name or name.startswith("global_step") for name in os.listdir(checkpoint)):
            logger.warning(
                f"{checkpoint} holds no optimizer state (saved with save_only_model=True?): training continues from its "
                "weights and routing state with a fresh optimizer and schedule, so it will not match an uninterrupted "
                "run. Resume from a checkpoint saved without save_only_model for that."
            )
        if self._users_optimizer:
            return
        saved, ours = (
            {name: scale for name, (scale, _) in lr_scaled_parameters(core, config).items()}
            for config in (saved_config, core.config)
        )
        if saved != ours:
            differ = [
                f"{name}={saved.get(name, 1.0)} (this model: {ours.get(name, 1.0)})"
                for name in ("area_lr_scale", "router_lr_scale")
                if saved.get(name, 1.0) != ours.get(name, 1.0)
            ]
            raise ValueError(
                f"{checkpoint} was trained with {' and '.join(differ)}; its optimizer state cannot continue with this "
                "model's learning-rate groups. Resume with the checkpoint's values (build the model with them, or load "
                "it with from_pretrained(checkpoint)), or start a new run from its weights without "
                "resume_from_checkpoint. Checkpoints saved before router_lr_scale existed (2026-11-29) trained their "
                "routers at the full lr: router_lr_scale=1.0."
            )

    @staticmethod
    def _check_resumed_architecture(core: nn.Module, checkpoint: str | os.PathLike, saved_config: Any) -> None:
        """The `check_resume` check of the checkpoint's weights against this model's (names and shapes, read from
        the safetensors headers without loading them)."""
        shapes = saved_weight_shapes(checkpoint)
        if shapes is None:
            return  # no safetensors weights: Trainer reports what it finds
        ours = {name: tuple(tensor.shape) for name, tensor in core.state_dict().items()}
        tied = getattr(core, "all_tied_weights_keys", None) or {}  # this model's tied weights: not in the file
        unplaced = sorted(set(shapes) - set(ours))
        absent = sorted(set(ours) - set(shapes) - set(tied))
        reshaped = sorted(name for name in set(shapes) & set(ours) if shapes[name] != ours[name])
        if not (unplaced or absent or reshaped):
            return
        skip = {
            "transformers_version",
            "architectures",
            "auto_map",
            "_name_or_path",
            "dtype",
            "torch_dtype",
            "use_cache",
        }

        def resolved(config: Any) -> dict[str, Any]:  # a field left unset (None) as the config resolves it
            return {key: getattr(config, f"effective_{key}", value) for key, value in config.to_dict().items()}

        saved_fields, our_fields = resolved(saved_config), resolved(core.config)
        fields = [
            f"{key}={saved_fields.get(key)!r} (this model: {our_fields.get(key)!r})"
            for key in sorted(set(saved_fields) | set(our_fields))
            if key not in skip and saved_fields.get(key) != our_fields.get(key)
        ]
        found = [
            f"{len(names)} {what}, e.g. {names[:2]}"
            for what, names in (
                ("tensors this model has no place for", unplaced),
                ("tensors of this model the checkpoint lacks", absent),
                ("tensors of other shapes", reshaped),
            )
            if names
        ]
        raise ValueError(
            f"{checkpoint} holds another model's weights: {'; '.join(found)}. Its config differs in "
            + (", ".join(fields[:6]) if fields else "no field (the weights do not match their own config.json)")
            + ". Resume with the model it was trained with (from_pretrained(checkpoint)), or start a new run without "
            "resume_from_checkpoint."
        )

    def _check_parallelism(self, core: nn.Module) -> None:
        """Refuse what would silently break SAL's semantics across devices; switch FSDP runs to the masked kernel."""
        if self.args.parallel_mode.value == "not_distributed":
            raise ValueError(
                f"SALTrainer sees {self.args.n_gpu} GPUs in one process, where Trainer would use torch.nn.DataParallel: "
                "its replicas record the selected areas and the in-place updates, so unselected areas would not be "
                "cleared and updates would be lost. Launch one process per GPU (`accelerate launch` or `torchrun`), or "
                "select one GPU with CUDA_VISIBLE_DEVICES=0."
            )
        config = core.config
        # The transformer's rule averages over the batch only (no `area_update_norm` field).
        if getattr(config, "area_update_norm", "batch") == "area" and (
            self.args.gradient_accumulation_steps > 1 or self.args.world_size > 1
        ):
            raise ValueError(
                "area_update_norm='area' averages each area's update over the samples it saw in one micro-batch of one "
                f"process, so gradient_accumulation_steps={self.args.gradient_accumulation_steps} and "
                f"{self.args.world_size} processes would not equal one large batch. Use area_update_norm='batch', or "
                "train with gradient_accumulation_steps=1 in one process."
            )
        if self.args.world_size > 1:
            # Learned feedback trains under DDP: the models return views of their feedback matrices from the forward,
            # so DDP reduces their gradient (tests/test_distributed.py, test_transformer_robustness.py: 2 processes
            # = 1). error_source='vocab' differentiates the logits, a tensor of the forward pass, after the forward:
            # DDP (find_unused_parameters=True, Trainer's default for these models) raises during the backward.
            if getattr(config, "error_source", "hidden") == "vocab":
                raise ValueError(
                    f"error_source='vocab' differentiates the logits that DDP ({self.args.world_size} processes) "
                    "re-wraps after the forward. Use error_source='hidden' (the default), or train in one process."
                )
        if getattr(self, "is_fsdp_enabled", False):
            self.check_fsdp_lr_groups(core, self.accelerator.state.fsdp_plugin)
        self.prepare_areas_for_fsdp(core)

    def check_fsdp_lr_groups(self, core: nn.Module, plugin: Any) -> None:
        """Refuse FSDP1 with `use_orig_params=False` for a model with areas or scaled learning rates (`area_lr_scale`,
        `router_lr_scale`): FSDP1 then flattens the parameters into new tensors, so the optimizer's lr groups would
        find none of the parameters they name (every one would step at the full lr), and the hook that keeps
        unselected areas from stepping would clear gradients the optimizer no longer holds (Adam's momentum would
        move them; the hook is registered on an optimizer of your own too)."""
        if getattr(plugin, "fsdp_version", 1) != 1 or getattr(plugin, "use_orig_params", True):
            return
        groups = {} if self._users_optimizer else lr_scaled_parameters(core, core.config)  # yours: no lr groups
        scaled = [f"{name}={scale:g}" for name, (scale, _) in groups.items()]
        areas = len(area_layers(core))
        if scaled or areas:
            lost = [f"{areas} area layers' rule that unselected areas do not step"] if areas else []
            raise ValueError(
                f"FSDP1 with use_orig_params=False flattens the parameters, so {' and '.join(lost + scaled)} would "
                "not reach the optimizer. Use FSDP2 (fsdp_version: 2, as examples/accelerate/fsdp_gpu.yaml does), or "
                "keep the original parameters (fsdp_use_orig_params: true in an accelerate config; use_orig_params in "
                "TrainingArguments' fsdp_config, true by default)."
            )

    def prepare_areas_for_fsdp(self, core: nn.Module) -> int:
        """Under FSDP with several processes, switch every area layer to the masked kernel (returns how many): with
        the split kernel each rank's graph holds only the areas its samples selected, and FSDP's gradient reduction
        needs the same parameters on every rank. Unselected areas still get no update (the optimizer hook clears the
        zero gradients of areas no rank selected)."""
        if not (getattr(self, "is_fsdp_enabled", False) and self.args.world_size > 1):
            return 0
        config = core.config
        if config.effective_feedback_alignment == "kolen_pollack":
            raise ValueError(
                f"FSDP with {self.args.world_size} processes and learned (Kolen-Pollack) feedback matrices is untested "
                "(scripts/fsdp_check.py checks fixed feedback). Pass feedback_alignment='fixed' to the config, or "
                "train with DDP, which is tested for both."
            )
        switched = [layer for layer in area_layers(core) if layer.implementation != "masked"]
        for layer in switched:
            layer.implementation = "masked"
        if switched:
            logger.warning(
                f"FSDP with {self.args.world_size} processes: {len(switched)} area layers switched from "
                "area_implementation='split'/'auto' to 'masked' (FSDP reduces the same parameters on every rank)."
            )
        return len(switched)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        if isinstance(model, nn.DataParallel):
            raise ValueError(
                "SAL models cannot run under torch.nn.DataParallel (its replicas record the selected areas and the "
                "in-place updates). Launch one process per GPU with `accelerate launch` or `torchrun`."
            )
        core = self.accelerator.unwrap_model(model)
        if model.training and "labels" not in inputs and isinstance(core, SALTransformerForCausalLM):
            raise ValueError(
                f"Training a causal LM needs `labels`: the input ids (shifted inside; -100 where a token does not count); "
                f"the batch has only {sorted(inputs)}. DataCollatorForLanguageModeling(tokenizer, mlm=False) adds them."
            )
        if model.training and "labels" not in inputs:
            raise ValueError(
                f"Training needs the class ids as `labels` (integers, shape (batch_size,)); the batch has only "
                f"{sorted(inputs)}. Trainer's default collator drops string columns and remove_unused_columns drops "
                "columns the model does not take: map label names to ids (datasets' class_encode_column, or "
                "config.label2id), name the column `label` or `labels`, or return `labels` from your data_collator."
            )
        if model.training:  # router="claim": the batch may claim areas before it trains
            core.observe_claims(inputs, forward=model)
        if self.learning_rule is None or not model.training:
            loss, outputs = super().compute_loss(
                model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
            )
        else:
            outputs = model(**inputs, **self._window_loss_kwargs(num_items_in_batch), local=True, return_dict=True)
            self._weigh_routing_losses(outputs, inputs)
            # The model's own views of its feedback matrices where it returns them (DDP then counts learned ones used).
            feedback = getattr(outputs, "feedback", None) or core.feedback_matrices()
            loss = self.learning_rule.surrogate(outputs, inputs["labels"], feedback)
        if model.training and not torch.isfinite(loss.detach()).all():
            core.discard_routing_statistics()  # this forward's, never applied: a later `train()` starts clean
            reset_area_selection(core)
            step = self.state.global_step
            largest = max((float(p.detach().abs().max()) for p in core.parameters() if p.numel()), default=0.0)
            raise FloatingPointError(
                f"Training loss is {loss.item()} at step {step + 1} (epoch {self.state.epoch}); stopped before "
                f"applying its update, so no checkpoint is written. The model holds the weights after step {step} "
                f"(largest |weight| {largest:.3g}), which gave this loss: a checkpoint saved at step {step} holds them "
                "too, so resume from an earlier one if they diverged (save_total_limit keeps only the newest). Lower "
                "learning_rate, set max_grad_norm, or check the inputs for NaN/Inf."
            )
        return (loss, outputs) if return_outputs else loss

    def get_batch_samples(
        self, epoch_iterator: Iterator, num_batches: int, device: torch.device
    ) -> tuple[list, torch.Tensor | int | None]:
        """[`~transformers.Trainer.get_batch_samples`], also counting the rows (tokens, for text) the routers see in
        the accumulation window (`_weigh_routing_losses`)."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._routed_in_window = sum(routed_count(batch) for batch in batch_samples) if batch_samples else None
        return batch_samples, num_items_in_batch

    def _weigh_routing_losses(self, outputs: Any, inputs: dict[str, Any]) -> None:
        """Under gradient accumulation, make the routers' objectives (each a mean over its micro-batch's rows, or
        unpadded tokens) the mean over the whole window's, as one batch of all would have it: Trainer divides every
        micro-batch's loss by the number of micro-batches, so micro-batch i weighs ``n_i * steps / N``. Exact for
        micro-batches of unequal token counts (padding) and a short last one; counted per process."""
        # Only inside Trainer's step (`training_step` sets `_in_training_step`): a direct `compute_loss` (a loop of
        # one's own, a benchmark) has no window, and Trainer sets `current_gradient_accumulation_steps` in `train`.
        window = getattr(self, "_routed_in_window", None)
        steps = getattr(self, "current_gradient_accumulation_steps", 1)
        losses = getattr(outputs, "routing_losses", None)
        if not getattr(self, "_in_training_step", False) or not losses or window is None or steps == 1:
            return
        total = window.clamp(min=1) if isinstance(window, torch.Tensor) else max(window, 1)
        weight = routed_count(inputs) * steps / total
        outputs.routing_losses = tuple(loss * weight for loss in losses)

    def _window_loss_kwargs(self, num_items_in_batch: torch.Tensor | int | None) -> dict[str, Any]:
        """For a model that takes `num_items_in_batch` (the causal LM), the count that makes its local loss the mean
        over every counted token of the accumulation window (and of every process), as under `bp`: the local
        surrogate is then divided by the accumulation steps like any unscaled loss (`loss_is_scaled_for_ga=False`,
        under which the Kolen-Pollack decay, a mean per micro-batch, adds up to one per step; the routers'
        objectives are weighed by `_weigh_routing_losses`), and DDP averages over the processes.
        Without it, each micro-batch was a mean over its own tokens: micro-batches with more padding or prompt
        tokens weighed as much as full ones."""
        if num_items_in_batch is None or not self.model_accepts_loss_kwargs:
            return {}
        # (A window with no counted token stays 0: the model reads a count of 0 as 1, a loss of 0, not 0 / 0.)
        count = num_items_in_batch / self.current_gradient_accumulation_steps
        if self.args.average_tokens_across_devices and self.args.world_size > 1:  # counted over every process
            count = count / self.accelerator.num_processes
        return {"num_items_in_batch": count}

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        existing = getattr(self.optimizer, "optimizer", self.optimizer)  # None, the user's, or one made here before
        made_here = existing is not None and existing is getattr(self, "_sal_optimizer", None)
        optimizer = super().create_optimizer(model)
        core = self.accelerator.unwrap_model(self.model)
        # Accelerate's wrapper (a second `train()` gets it back) keeps the torch optimizer in `.optimizer`.
        torch_optimizer = getattr(optimizer, "optimizer", optimizer)
        has_areas = bool(area_layers(core))
        if has_areas and not isinstance(torch_optimizer, torch.optim.Optimizer):
            logger.warning(
                f"{type(torch_optimizer).__name__} is not a torch.optim.Optimizer: SALTrainer cannot hook its step. With "
                "area_implementation='masked' (or 'auto' on CUDA) unselected areas get zero gradients that it will "
                "apply; set area_implementation='split' or call clear_unselected_area_grads(model) before each step."
            )
        elif has_areas and getattr(self, "_area_hook_optimizer", None) is not torch_optimizer:
            hook_unselected_area_grads(torch_optimizer, core)
            self._area_hook_optimizer = torch_optimizer
        # Learning-rate multipliers of the selective path and of the learned routers, each as its own param group.
        scales = lr_scaled_parameters(core, core.config)
        if scales and not made_here:  # one made here was scaled when it was made
            if existing is not None:
                every = [p for _, params in scales.values() for p in params]
                for name, (scale, params) in scales.items():
                    if scale_applied(torch_optimizer, params, scale, every):  # scaled as this warning says
                        continue
                    finder = f"{name.removesuffix('_lr_scale')}_parameters"
                    logger.warning(
                        f"config.{name}={scale} is not applied: SALTrainer scales these learning rates only in the "
                        f"optimizer it creates, and you passed your own. Put sal_hf.optim.{finder}(model) in a param "
                        f"group with lr * {name}, or call sal_hf.optim.scale_learning_rates(optimizer, "
                        f"sal_hf.optim.{finder}(model), {scale}) before training."
                    )
            else:
                for scale, params in scales.values():
                    scale_learning_rates(torch_optimizer, params, scale)
                self._sal_optimizer = torch_optimizer
        if self.in_place_area_update:
            self._check_in_place(torch_optimizer)
        return optimizer

    def _check_in_place(self, optimizer: torch.optim.Optimizer) -> None:
        """Raise unless the run allows `in_place_area_update` (plain SGD, nothing that needs every gradient first)."""
        problems = in_place_sgd_problems(optimizer)
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
        core = self.accelerator.unwrap_model(self.model)
        if getattr(core.config, "area_update_norm", "batch") == "area":
            problems.append("area_update_norm='area' (a per-area gradient scale): use area_update_norm='batch'")
        if self.args.torch_compile:
            problems.append("torch_compile=True (not supported with an update inside the backward): drop it")
        if problems:
            raise ValueError(
                "in_place_area_update=True applies plain SGD to every area inside the backward pass, so it cannot be "
                "combined with: " + "; ".join(problems) + ". Fix these or set in_place_area_update=False."
            )

    def in_place_area_updates(self, model: nn.Module) -> contextlib.AbstractContextManager:
        """With `in_place_area_update=True`, [`sal_hf.optim.in_place_area_sgd`] for `model` and this trainer's
        optimizer: `training_step` opens it; a hand-written loop around `compute_loss` and `backward` may too. A
        no-op otherwise."""
        if not self.in_place_area_update:
            return contextlib.nullcontext()
        return in_place_area_sgd(self.accelerator.unwrap_model(model), self.optimizer)

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        # Switched on for Trainer's own step only, never for the model outside it.
        self._in_training_step = True
        try:
            with self.in_place_area_updates(model):
                return super().training_step(model, inputs, num_items_in_batch)
        finally:
            self._in_training_step = False

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


__all__ = ["SALTrainer", "SALAreaHealthCallback", "SALRoutingCallback", "SALInterruptCallback"]
