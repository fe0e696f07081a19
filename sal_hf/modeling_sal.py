"""SAL model classes: the routed MLP layer, the model outputs, the pretrained base, the model and its image head.

The model computes outputs and knows nothing of how it is trained. With ``local=True`` it runs every layer
on a detached copy of its input and returns what a local learning rule needs (pre-activations, areas, the
routers' own losses); the rule itself lives in ``learning_rule.py`` and the trainer in ``trainer.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import ModelOutput, logging

from .activations import ACTIVATIONS
from .areas import SALAreaLinear, is_training_forward, make_norm, process_count
from .configuration_sal import SALConfig
from .feedback import FeedbackMatrices, sign_concordant
from .routing import AreaRouter, ClaimRouter, area_counts


logger = logging.get_logger(__name__)


@torch.no_grad()
def align_tensors(module: nn.Module, alignment: int = 64) -> int:
    """Copy every parameter and buffer of ``module`` that does not start at an ``alignment``-byte boundary into
    fresh memory; returns how many moved. Tensors loaded from a safetensors file can sit at any offset of it, where
    CPU matrix kernels sum in another order than for the same values freshly allocated (a 1e-7 difference): after
    this, a reloaded model gives bit-identical outputs to the one that was saved."""
    moved = 0
    for submodule in module.modules():
        for name, tensor in [*submodule.named_parameters(recurse=False), *submodule.named_buffers(recurse=False)]:
            if tensor.device.type == "meta" or tensor.numel() == 0 or tensor.data_ptr() % alignment == 0:
                continue
            if isinstance(tensor, nn.Parameter):
                tensor.data = tensor.data.clone()
            else:
                setattr(submodule, name, tensor.clone())
            moved += 1
    return moved


class SALLayer(nn.Module):
    """One SAL layer: normalise the input (optional), route it (unless the area is given), then the selected
    area's linear map, the optional shared dense path, the activation and the optional residual connection.

    Args:
        config: the model config.
        in_features: input size.
        out_features: output size.
        layer_index: position in the network (seeds the router).
        num_areas: K for this layer.
        route: whether this layer owns a router (False when routing is shared and this is not the first layer).
        activation: the activation, or None for the output layer.
        residual: add the layer's input to its output (needs ``in_features == out_features``), as
            ``h = x + config.effective_residual_scale * f(a)``.
    """

    def __init__(
        self,
        config: SALConfig,
        in_features: int,
        out_features: int,
        layer_index: int,
        num_areas: int,
        route: bool,
        activation: str | None,
        residual: bool = False,
    ) -> None:
        super().__init__()
        if residual and in_features != out_features:
            raise ValueError(
                f"A residual layer needs in_features == out_features; got {in_features} -> {out_features}."
            )
        self.residual = residual
        self.residual_scale = config.effective_residual_scale
        self.norm = make_norm(config.norm, in_features)
        self.router = None
        if route and num_areas > 1 and config.router == "claim":
            self.router = ClaimRouter(
                in_features,
                num_areas,
                areas_per_claim=config.claim_areas,
                surprise=config.claim_surprise,
                window=config.claim_window,
                prototypes_per_area=config.claim_prototypes,
            )
        elif route and num_areas > 1:
            self.router = AreaRouter(
                in_features,
                num_areas,
                config.routing_dim,
                learned=config.router == "learned",
                seed=config.routing_seed + 2 * layer_index,
                balance_rate=config.routing_balance_rate,
                center_momentum=config.routing_center_momentum,
            )
        self.areas = SALAreaLinear(
            in_features,
            out_features,
            num_areas,
            partition=config.area_mode == "partition",
            implementation=config.area_implementation,
        )
        self.shared = (
            nn.Linear(in_features, out_features) if config.effective_dual_path and activation is not None else None
        )
        self.activation = ACTIVATIONS[activation] if activation is not None else None
        # `area_update_norm="area"`: a local step averages each area's update over its own samples (B / n_k times the
        # batch mean), for the area parameters only; the shared path and the norm keep the batch-mean update.
        self.per_area_update = config.area_update_norm == "area" and num_areas > 1

    def forward(
        self, x: torch.Tensor, area: torch.Tensor | None = None, local: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Returns ``(h, a, area, routing_loss)``: output (B, out), pre-activation (B, out), area (B,) or
        None, and the router's local loss when ``local`` and the router learns (else None).

        With a residual connection ``h = x + s f(a)``, so ``dh/da = s f'(a)``: a local rule that feeds the
        signal ``g`` at ``h`` back into ``a`` as ``s g * f'(a)`` trains this layer's norm, areas and
        shared path by autograd inside the layer (``a`` has a graph to those and to nothing else)."""
        routing_loss = None
        skip = x
        if self.norm is not None:
            x = self.norm(x)
        if self.router is not None:
            area, routed = self.router(x)
            if local and self.router.learned:
                routing_loss = self.router.local_loss(routed, area)
        grad_scale = None
        if local and self.per_area_update:
            counts = area_counts(area, self.areas.num_areas).clamp(min=1)  # (K,)
            grad_scale = area.numel() / counts.to(torch.float32)
        a = self.areas(x, area, grad_scale)
        if self.shared is not None:
            a = a + self.shared(x)
        h = self.activation(a) if self.activation is not None else a
        if self.residual:
            h = skip + self.residual_scale * h
        return h, a, area, routing_loss

    @torch.no_grad()
    def mean_forward_weight(self) -> torch.Tensor:
        """The layer's forward matrix averaged over its areas (expert mode; partition mode stacks the blocks),
        plus the shared path: (out, in), no graph. Only sign-concordant feedback reads it."""
        weights = self.areas.weights
        weight = torch.cat(weights, dim=0) if self.areas.partition else torch.stack(weights).mean(0)
        return weight + self.shared.weight if self.shared is not None else weight


@dataclass
class SALModelOutput(ModelOutput):
    """Output of [`SALModel`].

    Args:
        last_hidden_state (`torch.Tensor` of shape `(batch_size, hidden_sizes[-1])`): output of the last hidden layer.
        hidden_states (`tuple[torch.Tensor]`, *optional*): input and every hidden layer's output, with
            `output_hidden_states=True`.
        areas (`tuple[torch.Tensor | None]`): area selected by each sample in each hidden layer, `(batch_size,)`
            long, or None for a layer without areas. Returned in training and local forwards, and with
            `return_areas=True` (see `SALModel.forward`).
        pre_activations (`tuple[torch.Tensor]`, *optional*): pre-activation of each hidden layer, with `local=True`.
        routing_losses (`tuple[torch.Tensor]`, *optional*): the learned routers' local objectives, with `local=True`.
    """

    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    areas: tuple[torch.Tensor | None, ...] | None = None
    pre_activations: tuple[torch.Tensor, ...] | None = None
    routing_losses: tuple[torch.Tensor, ...] | None = None


@dataclass
class SALImageClassifierOutput(ImageClassifierOutput):
    """[`ImageClassifierOutput`] plus what SAL records: `areas` (hidden layers, then the output layer),
    and with `local=True` the hidden `pre_activations`, the `routing_losses` and the `feedback` matrices the local
    rule uses this step."""

    areas: tuple[torch.Tensor | None, ...] | None = None
    pre_activations: tuple[torch.Tensor, ...] | None = None
    routing_losses: tuple[torch.Tensor, ...] | None = None
    feedback: tuple[torch.Tensor, ...] | None = None


class SALRoutingMixin:
    """What every SAL model (the MLP, the transformer) offers its trainer: the routers, their once-per-step
    statistics and area health, and a checked `from_pretrained` whose tensors sit in aligned memory
    (`align_tensors`)."""

    # Weights a checkpoint may lack because the config regenerates them: the feedback matrices (from `feedback_seed`)
    # when the checkpoint has none, e.g. a `bp` checkpoint loaded with `learning_rule="sal"`.
    _sal_regenerated_prefixes: tuple[str, ...] = ("feedback.",)
    # A task head that a checkpoint saved by another architecture lacks and that loading draws fresh (a language
    # model loaded for sequence classification: the usual start of fine-tuning). Checked against the checkpoint's
    # `config.architectures`, so a checkpoint of this very class that lacks its head still raises.
    _sal_new_head_prefixes: tuple[str, ...] = ()
    # Auto class -> class name of the copied modeling file, written to `auto_map` for remote code (see save_pretrained).
    _sal_remote_classes: dict[str, str] = {}

    def _feedback_views(self, local: bool) -> tuple[torch.Tensor, ...] | None:
        """With `local=True` under a local rule: views of the feedback matrices the rule uses, returned by the
        forward so that learned (Kolen-Pollack) ones are part of its graph (DDP, `find_unused_parameters=True`,
        otherwise marks them unused after the forward and raises when the rule's backward reaches them;
        tests/test_distributed.py, tests/test_transformer_robustness.py)."""
        if not local or getattr(self, "feedback", None) is None:
            return None
        return tuple(matrix.view_as(matrix) for matrix in self.feedback_matrices())

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        # transformers writes only the saved class's own auto class to `auto_map`; the copied modeling file defines
        # every class, so let the other auto classes (`_sal_remote_classes`) load the checkpoint as remote code too.
        if self._auto_class is not None:
            module = type(self).__module__.split(".")[-1]
            self.config.auto_map = {
                **{auto: f"{module}.{name}" for auto, name in self._sal_remote_classes.items()},
                **(getattr(self.config, "auto_map", None) or {}),
            }
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, *model_args, **kwargs):
        """[`PreTrainedModel.from_pretrained`] with SAL's checks: an unreadable weights file raises an `OSError`
        naming it, and weights missing from the checkpoint, or shaped for another config, raise a `ValueError`
        naming the checkpoint instead of being silently drawn at random (only the feedback matrices may be missing:
        they are regenerated from `feedback_seed`; and a task head this class adds to another architecture's
        checkpoint, see `_sal_new_head_prefixes`). Frozen feedback matrices are always rebuilt from the config (they
        hold nothing learned); learned (Kolen-Pollack) ones load as saved, and a learned matrix loaded from a
        checkpoint that stored frozen ones starts from those."""
        output_loading_info = kwargs.pop("output_loading_info", False)
        source = str(pretrained_model_name_or_path)
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        except RuntimeError as error:
            if "ignore_mismatched_sizes" not in str(error):
                raise
            # Which weights differ? Load again letting transformers re-initialise them, then accept the load only
            # when they are feedback matrices this model draws anew (see `_redrawn_feedback`).
            model, info = super().from_pretrained(
                pretrained_model_name_or_path,
                *model_args,
                output_loading_info=True,
                **{**kwargs, "ignore_mismatched_sizes": True},
            )
            shapes = sorted(info["mismatched_keys"])
            if not shapes or not cls._redrawn_feedback(model, [key for key, *_ in shapes]):
                overrides = [f"{k}={v!r}" for k, v in sorted(kwargs.items()) if hasattr(model.config, k)]
                raise ValueError(
                    f"The weights in {source} do not fit this model: "
                    + ", ".join(f"{key} saved {tuple(saved)}, here {tuple(here)}" for key, saved, here in shapes[:4])
                    + (
                        f" (this call sets {', '.join(overrides)})"
                        if overrides
                        else " (num_areas, hidden sizes, routing_dim, router or claim_* settings changed?)"
                    )
                    + ". Re-save the model, fix the config, or pass ignore_mismatched_sizes=True to re-initialise the "
                    "mismatched weights."
                ) from error
        except SafetensorError as error:
            weights = os.path.join(source, "model.safetensors") if os.path.isdir(source) else source
            raise OSError(
                f"Cannot read the SAL weights in {weights}: {error}. The file is truncated or corrupted; restore it "
                "from another copy or load an earlier checkpoint."
            ) from error
        missing = sorted(key for key in info["missing_keys"] if not cls._may_be_missing(key, model.config))
        feedback = getattr(model, "feedback", None)
        learned = isinstance(feedback, FeedbackMatrices) and feedback.learned
        # Feedback matrices are regenerated only when the checkpoint has none (a `bp` checkpoint loaded for a local
        # rule); some present and some missing, in a checkpoint that learned them, means a learned Kolen-Pollack
        # matrix was deleted or the layout changed. (Frozen matrices are rebuilt from the config whatever was saved.)
        lost = [key for key in info["missing_keys"] if key.startswith(cls._sal_regenerated_prefixes)]
        partial = bool(lost) and len(lost) < sum(
            key.startswith(cls._sal_regenerated_prefixes) for key in model.state_dict()
        )
        if partial and learned and cls._saved_feedback_learned(pretrained_model_name_or_path, kwargs):
            missing = sorted(missing + lost)
        if missing:
            raise ValueError(
                f"The checkpoint {source} lacks {len(missing)} weights this SAL model needs, e.g. {missing[:3]}. Its "
                "weights do not match its config.json (num_areas, hidden sizes, the feedback layout, ...) or a tensor "
                "was deleted; re-save the model or fix the config."
            )
        dropped = sorted(key for key in info["unexpected_keys"] if cls._dropped_from_body(model, key))
        if dropped:
            saved = cls._saved_config(pretrained_model_name_or_path, kwargs)  # this call's overrides that change it
            overrides = [
                f"{k}={v!r}"
                for k, v in sorted(kwargs.items())
                if hasattr(model.config, k) and (saved is None or getattr(saved, k, None) != v) and k != "dtype"
            ]
            raise ValueError(
                f"The checkpoint {source} holds {len(dropped)} weights this model has no place for, e.g. "
                f"{dropped[:3]}: "
                + (f"this call sets {', '.join(overrides)}" if overrides else "its config.json no longer matches them")
                + ", so loading would drop them and build another model (num_hidden_layers, hidden_sizes, num_areas, "
                "dual_path, norm, output_areas, router ...). Load it with the config it was saved with, or re-save it; "
                "to keep only part of it on purpose, load its state_dict yourself with strict=False."
            )
        extra = sorted(key for key in info["unexpected_keys"] if key.startswith(cls._sal_regenerated_prefixes))
        if extra and learned and cls._saved_feedback_learned(pretrained_model_name_or_path, kwargs):
            raise ValueError(
                f"The checkpoint {source} holds feedback matrices this model has no place for, e.g. {extra[:3]}: it "
                f"was saved with another feedback layout (this model has {len(feedback.shapes)} learned matrices, "
                f"{feedback.mode!r} feedback), so its learned feedback would be dropped. Load it with the `feedback`, "
                "`feedback_scope` (or `feedback_points`) of its config.json, or train the new layout from a fresh "
                "model."
            )
        # Learned matrices whose shape changed (a new label set) are drawn anew, with this call's gain and seed; the
        # warning below is for matrices that load as trained, so it is skipped only when none did.
        mismatched = {key for key, *_ in info.get("mismatched_keys", ())}
        redrawn = learned and {f"feedback.layer_{i}" for i in range(len(feedback.shapes))} <= mismatched
        for field in ("feedback_gain", "feedback_seed"):  # what draws new feedback matrices, not loaded ones
            value = getattr(model.config, field, None)
            if not learned or lost or redrawn or value is None or (field not in kwargs and "config" not in kwargs):
                continue
            saved = cls._saved_config(pretrained_model_name_or_path, kwargs)
            saved_value = value if saved is None else getattr(saved, field, value)  # None: weights alone, `config=`
            if saved_value != value:
                logger.warning(
                    f"{field}={value!r} (saved: {saved_value!r}) sets the random draw of new feedback matrices only; "
                    f"the learned (Kolen-Pollack) matrices in {source} load as trained, so it changes nothing here. "
                    f"Train a fresh model to use another {field.split('_')[1]}."
                )
        if isinstance(feedback, FeedbackMatrices) and not feedback.learned:
            # Frozen feedback is set by the config alone (seed, identity): rebuild it, so that a checkpoint loaded with
            # another rule or feedback_alignment uses the feedback its config derives (a `dfa` transformer's random
            # draw is not the identity a `sal` config derives, and the reverse).
            feedback.reset_parameters()
        align_tensors(model)
        return (model, info) if output_loading_info else model

    @classmethod
    def _redrawn_feedback(cls, model: nn.Module, keys: list[str]) -> bool:
        """Whether weights of these shapes-changed ``keys`` may be drawn anew: all are feedback matrices, and frozen
        (rebuilt from the config whatever was saved) or learned ones of a checkpoint saved by another architecture
        (a language model's per-token feedback loaded for classification: there is nothing to keep)."""
        feedback = getattr(model, "feedback", None)
        if not keys or not all(key.startswith(cls._sal_regenerated_prefixes) for key in keys):
            return False
        if isinstance(feedback, FeedbackMatrices) and feedback.learned:
            if cls.__name__ in (getattr(model.config, "architectures", None) or []):
                return False
            logger.warning(
                f"The learned feedback matrices {keys} have another shape in the checkpoint (another task's error "
                f"size); {cls.__name__} starts them from a fresh draw."
            )
        return True

    @classmethod
    def _dropped_from_body(cls, model: nn.Module, key: str) -> bool:
        """Whether the unused checkpoint weight ``key`` belongs to a part this model has (so its config describes
        another model, and loading would silently drop it). Feedback matrices (checked separately) and the heads of
        other classes (an LM's `lm_head` loaded as a classifier or a body) are not."""
        if key.startswith(cls._sal_regenerated_prefixes):
            return False
        first = key.split(".", 1)[0]
        return first in model._modules or first in model._parameters or first in model._buffers

    @classmethod
    def _saved_config(cls, source: str | os.PathLike, kwargs: dict):
        """The checkpoint's own config (its config.json, without this call's overrides); None when it has none."""
        hub = ("cache_dir", "force_download", "proxies", "token", "local_files_only", "revision", "subfolder")
        config_dict, _ = cls.config_class.get_config_dict(source, **{k: kwargs[k] for k in hub if k in kwargs})
        return cls.config_class.from_dict(config_dict) if config_dict else None

    @classmethod
    def _saved_feedback_learned(cls, source: str | os.PathLike, kwargs: dict) -> bool:
        """Whether the checkpoint's own config.json (without this call's overrides) learned its feedback matrices
        (without a config.json: whether the defaults do)."""
        saved = cls._saved_config(source, kwargs) or cls.config_class()
        return saved.learning_rule != "bp" and saved.effective_feedback_alignment == "kolen_pollack"

    @classmethod
    def _may_be_missing(cls, key: str, config: Any) -> bool:
        """Whether a checkpoint may lack weight ``key`` (see `_sal_regenerated_prefixes`, `_sal_new_head_prefixes`)."""
        if key.startswith(cls._sal_regenerated_prefixes):
            return True
        saved_by_this_class = cls.__name__ in (getattr(config, "architectures", None) or [])
        return not saved_by_this_class and key.startswith(cls._sal_new_head_prefixes)

    @property
    def routers(self) -> list[AreaRouter | ClaimRouter]:
        """Every router of the model, in layer order."""
        return [module for module in self.modules() if isinstance(module, (AreaRouter, ClaimRouter))]

    @torch.no_grad()
    def observe_claims(self, inputs: dict[str, Any], forward: nn.Module | None = None) -> None:
        """`router="claim"`: score the batch about to train (``inputs``, with its ``labels``) with the current model,
        routed as in training (softmax cross-entropy), and let each claim router claim areas on a surprise (see
        [`ClaimRouter.observe`]). Call before the batch's training forward; [`SALTrainer`] does. ``forward``: the
        module to run (a trainer's wrapped model; default this one). One forward and one host sync more a batch.
        Under ``torch.distributed`` every process calls it at the same batch: the loss is averaged over the processes
        (and a claim starts from the rows of all), so every process claims alike. (The mean of the processes' batch
        means is the global batch's mean when their batches are equal, as Accelerate's `even_batches` makes them.)"""
        routers = [r for r in self.routers if isinstance(r, ClaimRouter)] if self.config.router == "claim" else []
        if not routers:
            return
        for router in routers:
            router.probing = True
        try:
            loss = (forward if forward is not None else self)(**inputs, return_dict=True).loss.detach().float()
        finally:
            for router in routers:
                router.probing = False
        if process_count() > 1:
            torch.distributed.all_reduce(loss)
            loss = loss / process_count()
        for router in routers:
            router.observe(float(loss))

    def update_routing_statistics(self) -> None:
        """Apply the routing statistics gathered since the last optimizer step (running input mean, balancing
        bias). Trainers call this once per optimizer step; see [`SALTrainer`]."""
        for router in self.routers:
            router.update_statistics()

    def warn_if_backprop_training(self, local: bool, labels: Any) -> None:
        """Warn once when a local-rule model computes a training loss outside its local forward: a plain `Trainer`
        (TRL, Accelerate, a hand-written loop) calls `model(**batch)` and backpropagates that loss, which trains every
        layer by backprop and never applies the routers' statistics. Once per model."""
        if labels is None or local or not self.training or not torch.is_grad_enabled():
            return
        if self.config.learning_rule != "bp" and not getattr(self, "_warned_backprop", False):
            self._warned_backprop = True
            logger.warning(
                f"{type(self).__name__} has learning_rule={self.config.learning_rule!r} but ran a training forward "
                "with labels and local=False: a loss.backward() on its loss trains every layer by backpropagation, not "
                "by SAL's local rule, and no routing statistics are applied. Train it with sal_hf.SALTrainer (a "
                "transformers.Trainer subclass); or build it with learning_rule='bp' to train by backprop on purpose."
            )

    def returns_areas(self, return_areas: bool | None, local: bool) -> bool:
        """Whether a forward returns `areas`: as asked, else in training forwards (training mode with autograd on) and
        local forwards only (an optional output, off at inference, in eval mode or under `no_grad`: pipelines split
        every output tensor per sample, and a per-layer tuple cannot be split so)."""
        return (local or is_training_forward(self)) if return_areas is None else return_areas

    def discard_routing_statistics(self) -> None:
        """Drop the routing statistics gathered since the last optimizer step without applying them: those of a step
        that never happened (a NaN loss, an exception or an interrupt between the forward and the step)."""
        for router in self.routers:
            router.discard_pending()

    def area_health(self) -> dict[str, float]:
        """Per router, the area utilisation since its last report (see [`AreaRouter.health`]): min / max share of
        samples, dead areas (no sample) and the window's sample count. A router whose window is still too small for
        that (fewer than 4 samples per area) is left out and keeps counting."""
        stats: dict[str, float] = {}
        for index, router in enumerate(self.routers):
            for name, value in (router.health() or {}).items():
                stats[f"area/router_{index}/{name}"] = value
        return stats


class SALPreTrainedModel(SALRoutingMixin, PreTrainedModel):
    config: SALConfig
    config_class = SALConfig
    base_model_prefix = "sal"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = False
    _no_split_modules = ["SALLayer"]

    def __init__(self, config: SALConfig, *inputs, **kwargs) -> None:
        # `from_pretrained(..., num_areas=4)` sets attributes after the config validated itself: check again.
        config.validate_sal()
        super().__init__(config, *inputs, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # `init.*` skips tensors that were loaded from a checkpoint, so loading never overwrites them.
        if isinstance(module, SALAreaLinear):
            for k, (weight, bias) in enumerate(zip(module.weights, module.biases)):
                if k > 0 and self.config.area_init == "identical":
                    init.copy_(weight, module.weight_0)
                else:
                    init.kaiming_uniform_(weight, nonlinearity="relu")
                init.zeros_(bias)
        elif isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, nonlinearity="relu")
            init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (AreaRouter, ClaimRouter, FeedbackMatrices)):
            for name, value in module.initial_values().items():
                init.copy_(getattr(module, name), value)

    # `AutoModel` loads the body of any SAL checkpoint as remote code too (`SALRoutingMixin.save_pretrained`).
    _sal_remote_classes = {"AutoModel": "SALModel"}

    def get_input_embeddings(self) -> None:
        # SAL reads pixel values directly: no embedding layer (FSDP and resizing utilities ask for one).
        return None

    def get_output_embeddings(self) -> None:
        return None

    def _flatten_inputs(self, pixel_values: torch.Tensor | None) -> torch.Tensor:
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values.")
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor; got {type(pixel_values).__name__}.")
        if pixel_values.dim() < 2:
            raise ValueError(
                f"pixel_values must be batched, (batch_size, ...); got shape {tuple(pixel_values.shape)}. "
                "Add a batch dimension with pixel_values.unsqueeze(0)."
            )
        if pixel_values.shape[0] == 0:
            raise ValueError(f"Got an empty batch: pixel_values has shape {tuple(pixel_values.shape)}.")
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values must be floating point; got dtype={pixel_values.dtype}. Scale integer images, e.g. "
                "pixel_values.float() / 255."
            )
        per_sample = pixel_values[0].numel()
        if per_sample != self.config.input_size:
            raise ValueError(
                f"pixel_values has shape {tuple(pixel_values.shape)}, i.e. {per_sample} values per sample, but "
                f"config.input_size={self.config.input_size}. Resize the inputs or build the model with "
                f"input_size={per_sample}."
            )
        return pixel_values.reshape(pixel_values.shape[0], per_sample).to(self.dtype)  # (B, input_size)


def id_range(ids: torch.Tensor, ignore: int | None = None) -> tuple[int, int] | None:
    """(min, max) of integer ``ids``, the ``ignore`` entries read as 0, in one host sync; None when compiling (the
    sync would break the graph; the embedding's or cross_entropy's own check remains)."""
    if torch.compiler.is_compiling():
        return None
    if ignore is not None:
        ids = torch.where(ids == ignore, 0, ids)
    low, high = torch.stack(torch.aminmax(ids)).tolist()
    return low, high


def class_ids(labels: Any, batch_size: int, num_labels: int, hint: str = "") -> torch.Tensor:
    """``labels`` as int64 class ids, after raising a ValueError that names the value and the fix unless it is a
    (batch_size,) tensor of integer class ids (any integer dtype, not bool) in ``[0, num_labels)``. ``hint`` ends the
    message on a dtype or shape mismatch."""
    if not isinstance(labels, torch.Tensor):
        raise ValueError(
            f"labels must be a tensor of integer class ids; got a {type(labels).__name__}: {str(labels)[:80]}. "
            "Map label names to ids (config.label2id, or datasets' class_encode_column) before batching."
        )
    if labels.dim() != 1 or labels.shape[0] != batch_size or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(
            f"labels must be integer class ids of shape ({batch_size},); got shape {tuple(labels.shape)}, "
            f"dtype {labels.dtype}.{hint}"
        )
    labels = labels.long()
    bounds = id_range(labels)
    if bounds is None:
        return labels
    low, high = bounds
    if low < 0 or high >= num_labels:
        bad = low if low < 0 else high
        raise ValueError(
            f"Label {bad} is outside [0, {num_labels}) (config.num_labels={num_labels}). Map the "
            "labels to 0..num_labels-1 or build the model with a larger num_labels."
        )
    return labels


class SALModel(SALPreTrainedModel):
    """The routed MLP without a task head: inputs of any shape are flattened to `config.input_size`."""

    def __init__(self, config: SALConfig) -> None:
        super().__init__(config)
        sizes = [config.input_size, *config.hidden_sizes]
        self.layers = nn.ModuleList(
            SALLayer(
                config,
                sizes[i],
                sizes[i + 1],
                layer_index=i,
                num_areas=config.num_areas,
                route=config.routing_scope == "layer" or i == 0,
                activation=config.hidden_act,
                residual=config.residual and i > 0,
            )
            for i in range(len(config.hidden_sizes))
        )
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        local: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        return_areas: bool | None = None,
    ) -> SALModelOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, ...)` with `input_size` values per sample).
            local (`bool`, defaults to `False`):
                Run each layer on a detached copy of its input (no gradient can cross a layer boundary) and
                return `pre_activations` and `routing_losses` for a local learning rule.
            output_hidden_states (`bool`, *optional*): return every layer's output.
            return_areas (`bool`, *optional*): return `areas`, the area each sample selected in each layer.
                Defaults to True in training mode and in local forwards, False otherwise: like transformers' optional
                outputs, off at inference (pipelines split every output tensor per sample, and a per-layer tuple
                cannot be split so).
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        h = self._flatten_inputs(pixel_values)
        hidden_states = [h]
        areas, pre_activations, routing_losses = [], [], []
        shared_area = None
        for layer in self.layers:
            h, a, area, routing_loss = layer(h.detach() if local else h, area=shared_area, local=local)
            if self.config.routing_scope == "shared":
                shared_area = area
            hidden_states.append(h)
            areas.append(area)
            pre_activations.append(a)
            if routing_loss is not None:
                routing_losses.append(routing_loss)
        return_areas = self.returns_areas(return_areas, local)
        output = SALModelOutput(
            last_hidden_state=h,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            areas=tuple(areas) if return_areas else None,
            pre_activations=tuple(pre_activations) if local else None,
            routing_losses=tuple(routing_losses) if local else None,
        )
        return output if return_dict else output.to_tuple()


class SALForImageClassification(SALPreTrainedModel):
    """[`SALModel`] with a linear output layer (with K areas if `config.output_areas`). Holds the fixed
    feedback matrices when the learning rule needs them."""

    # A `SALModel` checkpoint (no head) loads with a fresh output layer, as transformers' task models load a body.
    _sal_new_head_prefixes = ("classifier.",)

    def __init__(self, config: SALConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.sal = SALModel(config)
        self.classifier = SALLayer(
            config,
            config.hidden_sizes[-1],
            config.num_labels,
            layer_index=len(config.hidden_sizes),
            num_areas=config.num_areas if config.output_areas else 1,
            route=config.routing_scope == "layer",
            activation=None,
        )
        self.feedback = None
        if config.learning_rule != "bp":
            self.feedback = FeedbackMatrices(
                config.hidden_sizes,
                config.num_labels,
                mode=config.feedback_mode,
                seed=config.feedback_seed,
                learned=config.effective_feedback_alignment == "kolen_pollack",
                num_areas=config.num_areas if config.feedback_scope == "area" else 1,
                gain=config.feedback_gain,
            )
        self.post_init()

    def feedback_matrices(self) -> list[torch.Tensor]:
        """The ``B_l`` the local rule uses this step: the feedback matrices themselves (`fixed`, and the learnable
        ones of `kolen_pollack`), or for `feedback_alignment="sign"` their magnitudes with the signs of the
        forward matrix that reads each hidden layer's output (weight transport of signs; see feedback.py)."""
        if self.feedback is None:
            raise ValueError(
                f"learning_rule={self.config.learning_rule!r} has no feedback matrices: they exist for the local rules "
                "('sal', 'dfa', 'fa'). Load or build the model with one of those to train it locally."
            )
        matrices = self.feedback.matrices()
        if self.config.effective_feedback_alignment != "sign":
            return matrices
        readers = [*self.sal.layers[1:], self.classifier]  # layer l's output is read by layer l + 1
        return [sign_concordant(b, reader.mean_forward_weight()) for b, reader in zip(matrices, readers)]

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        local: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        return_areas: bool | None = None,
    ) -> SALImageClassifierOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, ...)` with `input_size` values per sample).
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Class ids in `[0, config.num_labels)`; the cross-entropy loss is returned when given.
            local (`bool`, defaults to `False`): see [`SALModel.forward`]; the output layer also gets a
                detached input.
            output_hidden_states (`bool`, *optional*): return every layer's output.
            return_areas (`bool`, *optional*): see [`SALModel.forward`] (here the output layer's area is last).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return_areas = self.returns_areas(return_areas, local)
        self.warn_if_backprop_training(local, labels)
        pixel_values = self.sal._flatten_inputs(pixel_values)  # checked first: its errors name the batch size
        if labels is not None:
            labels = class_ids(labels, pixel_values.shape[0], self.num_labels)
        outputs = self.sal(
            pixel_values, local=local, output_hidden_states=output_hidden_states, return_dict=True, return_areas=True
        )
        shared_area = outputs.areas[0] if self.config.routing_scope == "shared" and self.config.output_areas else None
        h = outputs.last_hidden_state
        logits, _, area, routing_loss = self.classifier(h.detach() if local else h, area=shared_area, local=local)

        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels)
        routing_losses = None
        if local:
            routing_losses = outputs.routing_losses + ((routing_loss,) if routing_loss is not None else ())
        output = SALImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            areas=(*outputs.areas, area) if return_areas else None,
            pre_activations=outputs.pre_activations,
            routing_losses=routing_losses,
            feedback=self._feedback_views(local),
        )
        return output if return_dict else output.to_tuple()


__all__ = ["SALPreTrainedModel", "SALModel", "SALForImageClassification"]
