"""SAL model classes: area layers, the routed MLP, and the image-classification head.

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
from transformers.utils import ModelOutput

from .configuration_sal import AREA_IMPLEMENTATIONS, AUTO_MASKED_MAX_AREAS, SALConfig
from .feedback import FeedbackMatrices
from .routing import AreaRouter


ACTIVATIONS = {"relu": F.relu, "tanh": torch.tanh, "gelu": F.gelu, "silu": F.silu, "sigmoid": torch.sigmoid}


def make_norm(kind: str, size: int) -> nn.Module | None:
    """The input normalisation of one layer (`SALConfig.norm`), or None."""
    if kind == "layernorm":
        return nn.LayerNorm(size)
    if kind == "rmsnorm":
        return nn.RMSNorm(size, eps=1e-6)
    return None


class _InPlaceSGDLinear(torch.autograd.Function):
    """``x W^T + b`` whose backward applies plain SGD to ``W`` and ``b`` in place and hands them no ``.grad``:
    ``W <- (1 - lr wd) W - lr g^T x`` in one ``addmm_`` (no gradient tensor is written or read back), likewise
    ``b``, with ``lr`` and ``wd`` read from their optimizer param groups at that moment (so schedulers apply). The
    input gradient is computed from ``W`` before the update. See ``SALAreaLinear.in_place_groups``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: nn.Parameter, bias: nn.Parameter, groups: tuple[dict, dict]):
        ctx.save_for_backward(x)
        ctx.weight, ctx.bias, ctx.groups = weight, bias, groups
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        weight, bias = ctx.weight, ctx.bias
        grad = grad.to(weight.dtype)  # bf16 under autocast; the update is applied in the weights' dtype
        grad_x = (grad @ weight).to(x.dtype) if ctx.needs_input_grad[0] else None
        weight_group, bias_group = ctx.groups
        with torch.no_grad():
            # torch.optim.SGD without momentum: p <- p - lr (grad + wd p).
            lr, decay = weight_group["lr"], weight_group["weight_decay"]
            weight.addmm_(grad.t(), x.to(weight.dtype), beta=1.0 - lr * decay, alpha=-lr)
            lr, decay = bias_group["lr"], bias_group["weight_decay"]
            if decay:
                bias.mul_(1.0 - lr * decay)
            bias.add_(grad.sum(0), alpha=-lr)
        return grad_x, None, None, None


class SALAreaLinear(nn.Module):
    """K disjoint linear maps; each sample goes through the one its area selects.

    One ``nn.Parameter`` per area (``weight_k``, ``bias_k``): an area no sample selected is not in the graph,
    gets no ``.grad`` at all, and so no optimizer momentum or weight decay can move it. (They are attributes of
    this module rather than an ``nn.ParameterList``: transformers' initialisation of custom code skips modules
    without parameters of their own.)

    Two implementations give the same outputs and, for every selected area, the same gradient (up to float
    summation order); see `SALConfig.area_implementation`:

    - ``split``: samples grouped by area, one matmul per non-empty area. The group sizes are read back to the
      host (a device sync per layer on a GPU); unselected areas are not in the graph.
    - ``masked``: the K areas concatenated into one matrix, every area computed for every sample in one matmul,
      then each sample keeps its own area's output. No host sync, a few kernels whatever K, but K times the
      FLOPs (expert mode; partition mode costs one dense layer) and every area is in the graph: unselected
      areas get a zero ``.grad``. A training forward therefore records the areas it selected in
      ``selected_areas`` (device-side, OR-ed over the forwards of one optimizer step), and
      [`clear_unselected_area_grads`] sets ``.grad = None`` on the others before the optimizer step.

    Under ``SALTrainer(in_place_area_update=True)`` training forwards take the split path and each selected area is
    updated by plain SGD inside the backward pass, without a ``.grad`` (``in_place_groups``, set for Trainer's step
    only).

    Args:
        in_features: input size.
        out_features: output size.
        num_areas: K.
        partition: if True, area k owns only the output block ``[k*out/K, (k+1)*out/K)`` and a sample's other
            outputs are zero (sparse activations); otherwise every area owns a full ``out x in`` matrix.
        implementation: ``"auto"``, ``"split"`` or ``"masked"`` (`SALConfig.area_implementation`).
    """

    def __init__(
        self, in_features: int, out_features: int, num_areas: int, partition: bool = False, implementation: str = "auto"
    ) -> None:
        super().__init__()
        if implementation not in AREA_IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {AREA_IMPLEMENTATIONS}; got {implementation!r}.")
        self.in_features = in_features
        self.out_features = out_features
        self.num_areas = num_areas
        self.partition = partition
        self.implementation = implementation
        self.block = out_features // num_areas if partition else out_features
        # (K,) bool on the input's device, or None: areas selected by the masked training forwards since the last
        # optimizer step. A plain attribute, not a buffer: never saved, and DDP does not overwrite it from rank 0.
        self.selected_areas: torch.Tensor | None = None
        # Runtime only, set by SALTrainer(in_place_area_update=True): per area, the optimizer param groups of its
        # weight and bias. When set, training forwards run the split path with the SGD update applied in place
        # during the backward (see _InPlaceSGDLinear); the areas never get a `.grad`.
        self.in_place_groups: list[tuple[dict, dict]] | None = None
        for k in range(num_areas):
            self.register_parameter(f"weight_{k}", nn.Parameter(torch.empty(self.block, in_features)))
            self.register_parameter(f"bias_{k}", nn.Parameter(torch.empty(self.block)))

    @property
    def weights(self) -> list[nn.Parameter]:
        return [getattr(self, f"weight_{k}") for k in range(self.num_areas)]

    @property
    def biases(self) -> list[nn.Parameter]:
        return [getattr(self, f"bias_{k}") for k in range(self.num_areas)]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, num_areas={self.num_areas}, partition={self.partition}"

    def uses_masked(self, device: torch.device) -> bool:
        """Whether a forward on ``device`` runs the masked implementation (resolves ``"auto"``)."""
        if self.num_areas == 1:
            return False
        if self.implementation == "auto":
            return torch.device(device).type == "cuda" and self.num_areas <= AUTO_MASKED_MAX_AREAS
        return self.implementation == "masked"

    def _linear(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Area ``k`` applied to ``x``; with ``in_place_groups`` set, in a training forward, updated in place."""
        weight, bias = getattr(self, f"weight_{k}"), getattr(self, f"bias_{k}")
        if self.in_place_groups is not None and self.training and torch.is_grad_enabled():
            return _InPlaceSGDLinear.apply(x, weight, bias, self.in_place_groups[k])
        return F.linear(x, weight, bias)

    def forward(self, x: torch.Tensor, area: torch.Tensor | None) -> torch.Tensor:
        if self.num_areas == 1:
            return self._linear(x, 0)
        if self.in_place_groups is None and self.uses_masked(x.device):
            return self._forward_masked(x, area)
        batch = x.shape[0]
        # Group samples by area: one matmul per non-empty area, never a loop over samples.
        order = torch.argsort(area, stable=True)  # (B,)
        counts = torch.bincount(area, minlength=self.num_areas).tolist()
        chunks = x[order].split(counts)
        y = torch.cat([self._linear(chunk, k) for k, chunk in enumerate(chunks) if counts[k]])  # (B, block), sorted
        if self.partition:
            full = y.new_zeros(batch, self.num_areas, self.block)  # (B, K, out/K), sorted
            full[torch.arange(batch, device=x.device), area[order]] = y
            y = full.view(batch, self.out_features)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(batch, device=order.device)
        return y[inverse]  # (B, out), original order

    def _forward_masked(self, x: torch.Tensor, area: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        if self.training and torch.is_grad_enabled():
            if self.selected_areas is None or self.selected_areas.device != area.device:
                self.selected_areas = torch.zeros(self.num_areas, dtype=torch.bool, device=area.device)
            self.selected_areas.index_fill_(0, area, True)  # no host sync
        # Rows [k*block, (k+1)*block) of the concatenation are area k's: one GEMM gives every area's output.
        weight = torch.cat(self.weights)  # (K*block, in)
        bias = torch.cat(self.biases)  # (K*block,)
        y = F.linear(x, weight, bias).view(batch, self.num_areas, self.block)  # (B, K, block)
        if self.partition:
            # Keep the sample's own block, zero the others; `where` (not a 0/1 product) so that an overflow in an
            # unselected block cannot turn into NaN. Its backward passes a zero gradient to unselected blocks.
            keep = torch.arange(self.num_areas, device=area.device) == area.unsqueeze(-1)  # (B, K)
            return torch.where(keep.unsqueeze(-1), y, 0.0).view(batch, self.out_features)  # (B, out)
        index = area.view(batch, 1, 1).expand(batch, 1, self.block)  # (B, 1, out)
        return y.gather(1, index).squeeze(1)  # (B, out); backward scatters into zeros: other areas get 0


def clear_unselected_area_grads(model: nn.Module) -> int:
    """Before an optimizer step: set ``.grad = None`` on every area that the masked forwards since the last call
    did not select, and start a new record. The masked implementation gives such areas an all-zero gradient;
    without this, momentum and weight decay would move them. A no-op for areas run by the split implementation.

    [`SALTrainer`] registers it on its optimizer (`register_step_pre_hook`); a hand-written loop calls it between
    `backward` and `optimizer.step()`, once per optimizer step (after all micro-batches of gradient accumulation).
    One host sync for the whole model. Under `torch.distributed`, the records are combined over all processes
    first (gradients were averaged over them, so an area selected on any process has a real gradient); every
    process must call it at the same step, as it does in an optimizer step.

    Args:
        model: a SAL model, or any module containing [`SALAreaLinear`] layers (a DDP wrapper, for instance).

    Returns:
        The number of area parameters whose gradient was cleared.
    """
    layers = [m for m in model.modules() if isinstance(m, SALAreaLinear) and m.selected_areas is not None]
    if not layers:
        return 0
    selected = torch.cat([layer.selected_areas for layer in layers]).to(torch.int32)  # (sum of K,)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(selected, op=torch.distributed.ReduceOp.MAX)
    flags = selected.tolist()  # the one host sync
    cleared, start = 0, 0
    for layer in layers:
        for k, (weight, bias) in enumerate(zip(layer.weights, layer.biases)):
            if flags[start + k]:
                continue
            for param in (weight, bias):
                if param.grad is not None:
                    param.grad = None
                    cleared += 1
        start += layer.num_areas
        layer.selected_areas = None
    return cleared


def reset_area_selection(model: nn.Module) -> None:
    """Forget the areas recorded since the last optimizer step (see [`clear_unselected_area_grads`]). For steps
    the optimizer skipped, e.g. when fp16 loss scaling found an overflow: [`SALTrainer`] calls it after every step."""
    for module in model.modules():
        if isinstance(module, SALAreaLinear):
            module.selected_areas = None


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
            ``h = x + config.residual_scale * f(a)``.
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
        self.residual_scale = config.residual_scale
        self.norm = make_norm(config.norm, in_features)
        self.router = None
        if route and num_areas > 1:
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
        self.shared = nn.Linear(in_features, out_features) if config.dual_path and activation is not None else None
        self.activation = ACTIVATIONS[activation] if activation is not None else None

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
        a = self.areas(x, area)
        if self.shared is not None:
            a = a + self.shared(x)
        h = self.activation(a) if self.activation is not None else a
        if self.residual:
            h = skip + self.residual_scale * h
        return h, a, area, routing_loss


@dataclass
class SALModelOutput(ModelOutput):
    """Output of [`SALModel`].

    Args:
        last_hidden_state (`torch.Tensor` of shape `(batch_size, hidden_sizes[-1])`): output of the last hidden layer.
        hidden_states (`tuple[torch.Tensor]`, *optional*): input and every hidden layer's output, with
            `output_hidden_states=True`.
        areas (`tuple[torch.Tensor | None]`): area selected by each sample in each hidden layer, `(batch_size,)`
            long, or None for a layer without areas.
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
    and with `local=True` the hidden `pre_activations` and the `routing_losses`."""

    areas: tuple[torch.Tensor | None, ...] | None = None
    pre_activations: tuple[torch.Tensor, ...] | None = None
    routing_losses: tuple[torch.Tensor, ...] | None = None


class SALPreTrainedModel(PreTrainedModel):
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
        elif isinstance(module, (AreaRouter, FeedbackMatrices)):
            for name, value in module.initial_values().items():
                init.copy_(getattr(module, name), value)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, *model_args, **kwargs):
        """[`PreTrainedModel.from_pretrained`] with SAL's checks: an unreadable weights file raises an `OSError`
        naming it, and weights missing from the checkpoint raise a `ValueError` instead of being silently drawn
        at random (only the feedback matrices may be missing: they are regenerated from `feedback_seed`, e.g.
        when a `bp` checkpoint is loaded with `learning_rule="sal"`)."""
        output_loading_info = kwargs.pop("output_loading_info", False)
        source = str(pretrained_model_name_or_path)
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        except RuntimeError as error:
            if "ignore_mismatched_sizes" not in str(error):
                raise
            raise ValueError(
                f"The weights in {source} do not fit its config.json (shapes differ; num_areas, hidden_sizes or "
                f"routing_dim changed?). Re-save the model, fix the config, or pass ignore_mismatched_sizes=True to "
                f"re-initialise the mismatched weights. ({error})"
            ) from error
        except SafetensorError as error:
            weights = os.path.join(source, "model.safetensors") if os.path.isdir(source) else source
            raise OSError(
                f"Cannot read the SAL weights in {weights}: {error}. The file is truncated or corrupted; restore it "
                "from another copy or load an earlier checkpoint."
            ) from error
        missing = sorted(key for key in info["missing_keys"] if not key.startswith("feedback."))
        if missing:
            raise ValueError(
                f"The checkpoint {source} lacks {len(missing)} weights this SAL model needs, e.g. {missing[:3]}. Its "
                "weights do not match its config.json (num_areas, hidden_sizes, ...); re-save the model or fix the config."
            )
        return (model, info) if output_loading_info else model

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        # transformers writes only the saved class's own auto class to `auto_map`; the copied modeling file
        # defines every SAL class, so let `AutoModel` load the body of any SAL checkpoint as remote code too.
        if self._auto_class is not None:
            module = type(self).__module__.split(".")[-1]
            self.config.auto_map = {"AutoModel": f"{module}.SALModel", **(getattr(self.config, "auto_map", None) or {})}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def get_input_embeddings(self) -> None:
        # SAL reads pixel values directly: no embedding layer (FSDP and resizing utilities ask for one).
        return None

    def get_output_embeddings(self) -> None:
        return None

    @property
    def routers(self) -> list[AreaRouter]:
        """Every router of the model, in layer order."""
        return [module for module in self.modules() if isinstance(module, AreaRouter)]

    def update_routing_statistics(self) -> None:
        """Apply the routing statistics gathered since the last optimizer step (running input mean, balancing
        bias). Trainers call this once per optimizer step; see [`SALTrainer`]."""
        for router in self.routers:
            router.update_statistics()

    def area_health(self) -> dict[str, float]:
        """Per-layer area utilisation since the last call: min / max share of samples and dead areas (no
        sample). Resets the counts."""
        stats: dict[str, float] = {}
        for index, router in enumerate(self.routers):
            load = router.pop_load()
            total = float(load.sum())
            if total == 0:
                continue
            share = load / total
            stats[f"area/router_{index}/min_share"] = round(float(share.min()), 4)
            stats[f"area/router_{index}/max_share"] = round(float(share.max()), 4)
            stats[f"area/router_{index}/dead"] = int((load == 0).sum())
        return stats

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
    ) -> SALModelOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, ...)` with `input_size` values per sample).
            local (`bool`, defaults to `False`):
                Run each layer on a detached copy of its input (no gradient can cross a layer boundary) and
                return `pre_activations` and `routing_losses` for a local learning rule.
            output_hidden_states (`bool`, *optional*): return every layer's output.
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
        output = SALModelOutput(
            last_hidden_state=h,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            areas=tuple(areas),
            pre_activations=tuple(pre_activations) if local else None,
            routing_losses=tuple(routing_losses) if local else None,
        )
        return output if return_dict else output.to_tuple()


class SALForImageClassification(SALPreTrainedModel):
    """[`SALModel`] with a linear output layer (with K areas if `config.output_areas`). Holds the fixed
    feedback matrices when the learning rule needs them."""

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
                config.hidden_sizes, config.num_labels, mode=config.feedback_mode, seed=config.feedback_seed
            )
        self.post_init()

    def _check_labels(self, labels: torch.Tensor, batch_size: int) -> None:
        if labels.dim() != 1 or labels.shape[0] != batch_size or labels.is_floating_point():
            raise ValueError(
                f"labels must be integer class ids of shape ({batch_size},); got shape {tuple(labels.shape)}, "
                f"dtype {labels.dtype}."
            )
        if torch.compiler.is_compiling():
            # Reading the range back is a host sync and a graph break; compiled, cross_entropy's own check remains.
            return
        low, high = torch.stack(torch.aminmax(labels)).tolist()  # one host sync for both
        if low < 0 or high >= self.num_labels:
            bad = low if low < 0 else high
            raise ValueError(
                f"Label {bad} is outside [0, {self.num_labels}) (config.num_labels={self.num_labels}). Map the "
                "labels to 0..num_labels-1 or build the model with a larger num_labels."
            )

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        local: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SALImageClassifierOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, ...)` with `input_size` values per sample).
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Class ids in `[0, config.num_labels)`; the cross-entropy loss is returned when given.
            local (`bool`, defaults to `False`): see [`SALModel.forward`]; the output layer also gets a
                detached input.
            output_hidden_states (`bool`, *optional*): return every layer's output.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if labels is not None and pixel_values is not None:
            self._check_labels(labels, pixel_values.shape[0])
        outputs = self.sal(pixel_values, local=local, output_hidden_states=output_hidden_states, return_dict=True)
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
            areas=(*outputs.areas, area),
            pre_activations=outputs.pre_activations,
            routing_losses=routing_losses,
        )
        return output if return_dict else output.to_tuple()


__all__ = ["SALPreTrainedModel", "SALModel", "SALForImageClassification"]
