"""The area layer: K mutually exclusive linear maps, one of which each sample (or token) goes through.

Pure torch, usable in any ``nn.Module``: give it the input and each row's area index (from ``routing.AreaRouter``
or anything else). Also the per-layer input normalisation the SAL models use.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


AREA_MODES = ("expert", "partition")
AREA_IMPLEMENTATIONS = ("auto", "split", "masked")
# `implementation="auto"` runs the masked kernel on CUDA up to this many areas: it computes every area for every
# sample, K times the FLOPs and output memory of one area (K=540, the 1e9 model, must stay split).
AUTO_MASKED_MAX_AREAS = 64
NORMS = ("none", "layernorm", "rmsnorm")


def is_training_forward(module: nn.Module) -> bool:
    """The one rule for "this forward trains": the module is in training mode *and* autograd records. Routers gather
    statistics and area layers record their selections only then, so a `no_grad` probe in training mode (a
    diagnostic) changes neither."""
    return module.training and torch.is_grad_enabled()


def process_count() -> int:
    """The number of ``torch.distributed`` processes: 1 unless a process group with several runs."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


class _ScaleGrad(torch.autograd.Function):
    """The identity whose backward multiplies the gradient by ``scale`` (a constant)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (scale,) = ctx.saved_tensors
        return grad * scale.to(grad.dtype), None


NORM_EPS = {"layernorm": 1e-5, "rmsnorm": 1e-6}


def make_norm(kind: str, size: int) -> nn.Module | None:
    """The input normalisation of one layer (`none`, `layernorm` or `rmsnorm`), or None."""
    if kind not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}; got {kind!r}.")
    if kind == "layernorm":
        return nn.LayerNorm(size, eps=NORM_EPS[kind])
    if kind == "rmsnorm":
        return nn.RMSNorm(size, eps=NORM_EPS[kind])
    return None


def normalized(hidden: torch.Tensor, kind: str) -> torch.Tensor:
    """``hidden`` normalised over its last dimension as :func:`make_norm`'s module of ``kind`` does it, without the
    module's affine parameters (its scale and shift at their initial 1 and 0); ``hidden`` itself for ``none``."""
    if kind not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}; got {kind!r}.")
    if kind == "layernorm":
        return F.layer_norm(hidden, hidden.shape[-1:], eps=NORM_EPS[kind])
    if kind == "rmsnorm":
        return F.rms_norm(hidden, hidden.shape[-1:], eps=NORM_EPS[kind])
    return hidden


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
      ``optim.clear_unselected_area_grads`` sets ``.grad = None`` on the others before the optimizer step (and,
      with either implementation and K > 1, on areas whose rows all carried no error: their gradient is exactly
      zero).

    Rows a ``mask`` drops (padding tokens) go through no area in either implementation: their output is zero and
    they select nothing, so an area that only such rows were routed to takes no optimizer step.

    ``area_linear`` is a runtime hook for the optimizer side: when set, training forwards take the split path and
    call ``area_linear(x, weight_k, bias_k, k)`` in place of ``F.linear`` (``optim.in_place_area_sgd`` installs
    one that applies plain SGD inside the backward pass; the layer knows nothing of optimizers).

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
        # Runtime only, installed by the optimizer side for the duration of a training step (see the class doc).
        self.area_linear: Callable[[torch.Tensor, nn.Parameter, nn.Parameter, int], torch.Tensor] | None = None
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
        capturing = torch.jit.is_tracing() or torch.compiler.is_exporting()
        if self.implementation == "auto":
            # Traced or exported, the split kernel's per-area sizes (the batch's area counts) would be baked in.
            cuda = torch.device(device).type == "cuda" and self.num_areas <= AUTO_MASKED_MAX_AREAS
            return cuda or capturing
        if self.implementation == "split" and capturing:
            raise ValueError(
                "area_implementation='split' sizes one matmul per area from the batch's area counts: torch.jit.trace "
                "would bake this batch's counts into the graph (wrong outputs for other inputs) and torch.export "
                "cannot capture them. Load the model with area_implementation='masked' (or 'auto') to trace or export."
            )
        return self.implementation == "masked"

    def _parameters_of(self, k: int, grad_scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias = getattr(self, f"weight_{k}"), getattr(self, f"bias_{k}")
        if grad_scale is None:
            return weight, bias
        return _ScaleGrad.apply(weight, grad_scale[k]), _ScaleGrad.apply(bias, grad_scale[k])

    def _linear(self, x: torch.Tensor, k: int, grad_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Area ``k`` applied to ``x``, through ``area_linear`` in a training forward when it is set."""
        if self.area_linear is not None and is_training_forward(self):
            if grad_scale is not None:
                raise ValueError(
                    "A per-area gradient scale (SALConfig.area_update_norm='area') cannot be combined with an in-place "
                    "area update (SALTrainer(in_place_area_update=True)): use area_update_norm='batch' or drop it."
                )
            return self.area_linear(x, getattr(self, f"weight_{k}"), getattr(self, f"bias_{k}"), k)
        return F.linear(x, *self._parameters_of(k, grad_scale))

    def forward(
        self,
        x: torch.Tensor,
        area: torch.Tensor | None,
        grad_scale: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Apply each row's area.

        Args:
            x: (..., in). Leading dimensions are flattened, so a (B, T, d) batch of tokens routes per token.
            area: (...) long, one area per row of ``x``; None when K = 1.
            grad_scale: optional (K,) constants: area k's weight and bias receive their gradient multiplied by
                ``grad_scale[k]``; the gradient of ``x`` is unchanged (e.g. an update averaged over each area's own
                rows: ``rows / n_k``).
            mask: optional (...) bool (or 0/1), the shape of ``area``: rows where it is False (padding tokens) go
                through no area. Their output is zero and they select nothing: an area only such rows were routed
                to is not in the graph (``split``) nor recorded as selected (``masked``), so it gets no gradient and
                no optimizer step. Ignored when K = 1.

        Returns:
            (..., out).
        """
        if self.num_areas == 1:
            return self._linear(x, 0, grad_scale)
        if x.dim() != 2:
            lead = x.shape[:-1]
            mask = mask.reshape(-1) if mask is not None else None
            return self(x.reshape(-1, x.shape[-1]), area.reshape(-1), grad_scale, mask).view(*lead, -1)
        if mask is not None:
            mask = mask.to(device=area.device, dtype=torch.bool)
        if self.area_linear is None and self.uses_masked(x.device):
            return self._forward_masked(x, area, grad_scale, mask)
        batch = x.shape[0]
        buckets = self.num_areas
        if mask is not None:
            # Masked rows form a bucket K of their own, sorted last and computed through no area.
            area = torch.where(mask, area, self.num_areas)
            buckets += 1
        # Group samples by area: one matmul per non-empty area, never a loop over samples.
        order = torch.argsort(area, stable=True)  # (B,)
        counts = torch.bincount(area, minlength=buckets).tolist()
        chunks = x[order].split(counts)
        outputs = [self._linear(chunks[k], k, grad_scale) for k in range(self.num_areas) if counts[k]]
        if not outputs:  # every row masked
            return x.new_zeros(batch, self.out_features)
        y = torch.cat(outputs)  # (kept, block), sorted; the masked rows, if any, are the last batch - kept
        kept = y.shape[0]
        if self.partition:
            full = y.new_zeros(batch, self.num_areas, self.block)  # (B, K, out/K), sorted
            full[torch.arange(kept, device=x.device), area[order][:kept]] = y
            y = full.view(batch, self.out_features)
        elif kept < batch:
            y = torch.cat([y, y.new_zeros(batch - kept, self.block)])  # (B, out), sorted
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(batch, device=order.device)
        return y[inverse]  # (B, out), original order

    def _forward_masked(
        self, x: torch.Tensor, area: torch.Tensor, grad_scale: torch.Tensor | None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch = x.shape[0]
        if is_training_forward(self):
            if self.selected_areas is None or self.selected_areas.device != area.device:
                self.selected_areas = torch.zeros(self.num_areas, dtype=torch.bool, device=area.device)
            if mask is None:
                self.selected_areas.index_fill_(0, area, True)  # no host sync
            else:  # the areas of the rows the mask keeps, still without a host sync
                hits = (area.unsqueeze(-1) == torch.arange(self.num_areas, device=area.device)) & mask.unsqueeze(-1)
                self.selected_areas |= hits.any(0)
        # Rows [k*block, (k+1)*block) of the concatenation are area k's: one GEMM gives every area's output.
        weight, bias = zip(*(self._parameters_of(k, grad_scale) for k in range(self.num_areas)))
        weight = torch.cat(weight)  # (K*block, in)
        bias = torch.cat(bias)  # (K*block,)
        y = F.linear(x, weight, bias).view(batch, self.num_areas, self.block)  # (B, K, block)
        if self.partition:
            # Keep the sample's own block, zero the others; `where` (not a 0/1 product) so that an overflow in an
            # unselected block cannot turn into NaN. Its backward passes a zero gradient to unselected blocks.
            keep = torch.arange(self.num_areas, device=area.device) == area.unsqueeze(-1)  # (B, K)
            if mask is not None:
                keep = keep & mask.unsqueeze(-1)  # a masked row keeps no block
            return torch.where(keep.unsqueeze(-1), y, 0.0).view(batch, self.out_features)  # (B, out)
        index = area.view(batch, 1, 1).expand(batch, 1, self.block)  # (B, 1, out)
        y = y.gather(1, index).squeeze(1)  # (B, out); backward scatters into zeros: other areas get 0
        # A masked row outputs zero (`where`: a zero gradient to every area, which then counts as unselected).
        return torch.where(mask.unsqueeze(-1), y, 0.0) if mask is not None else y


__all__ = ["SALAreaLinear", "make_norm"]
