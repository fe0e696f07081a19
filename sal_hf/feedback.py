"""Fixed random feedback: how the output error reaches hidden layers without weight transport.

Pure torch. Layer l (0-based, L hidden layers, d_l units) owns one frozen matrix ``B_l`` shaped like the
forward matrix that reads its output, and drawn like that matrix's initialisation (Kaiming uniform, fan-in
d_l), so the feedback signal has the scale of a backpropagated one:

- ``direct`` (DFA): ``B_l`` is (C, d_l) and the signal is ``g_l = e @ B_l``.
- ``layerwise`` (FA): ``B_l`` is (d_{l+1}, d_l), with d_L = C, and ``g_l = delta_{l+1} @ B_l``, where
  ``delta_{l+1}`` is the next hidden layer's local error. BP would use the forward ``W_{l+1}`` here.
- ``stream`` (residual-stream feedback, for residual stacks of equal width): ONE matrix ``B`` (C, d), ``layer_0``,
  drawn like a direct matrix (seed ``seed``), and every hidden layer receives the same signal ``g = J_L^T (e @ B)``: the
  output error projected to the last hidden state ``h_L``, through the Jacobian ``J_L`` of the parameter-free
  normalisation the output layer applies to ``h_L`` (layer norm or RMS norm without their affine parameters;
  identity with ``norm="none"``). It estimates the gradient at the end of the residual stream, which reaches every
  block along the skip path; ``J_L`` reads only ``h_L``'s own mean and scale, no forward weight.
  :func:`stream_signal`.

The stored matrices are never derived from forward weights: they come from their own seeded generator, which
also makes them identical across devices and processes (only ``sign`` below reads the forward weights' signs,
when the matrices are used). By default one matrix per layer is shared by all areas (the method notes' prototype
measured per-area feedback 2.5-8 points worse). ``SALConfig.feedback_scope="area"`` gives each area of layer l
its own direct ``B_l[k]`` (shape (K, C, d_l)): a sample's signal ``g_l = e @ B_l[k_l]`` uses the matrix of the
area it selected at that layer, and Kolen-Pollack updates ``B_l[k]`` from that area's samples alone (an area no sample
selected gets a zero gradient, and the decay is weighted by the area's share of the batch; ``SALTrainer`` steps the
matrices at the areas' lr, ``area_lr_scale``). The (K, C, d_l) stack is one parameter, so an optimizer with momentum
(AdamW) still moves an unselected area's matrix by its momentum, unlike the forward areas, whose zero gradients
``optim.clear_unselected_area_grads`` drops.

How ``B_l`` is refined (``SALConfig.feedback_alignment``; see docs/FEEDBACK.md):

- ``fixed``: the frozen random draw above (feedback alignment as published). Local signals only.
- ``kolen_pollack``: ``B_l`` is a learnable parameter that receives the outer product of the signal it carries
  and the activity it carries it to, plus decay: ``grad B_l = s_l^T h_l + lambda B_l`` with ``s_l = e`` (direct:
  direct Kolen-Pollack, Webster et al. 2020) or ``s_l = delta_{l+1}`` (layer-wise: Kolen-Pollack, Akrout et al.
  2019). For layer-wise feedback that is exactly the update of the dense forward matrix ``W_{l+1}`` that reads
  ``h_l`` (with areas: of its shared path; without an input norm), so ``B_l - W_{l+1}`` changes only through
  ``lambda B_l`` (``feedback_decay``, 1e-3 by default; without it ``B_l`` aligns with ``W_{l+1}`` as their shared
  updates grow), without ever reading it (no weight transport). :func:`kolen_pollack_gradient`.
- ``sign``: ``B_l = |B_l^fixed| * sign(W_{l+1})`` (fixed random magnitudes, the forward weights' signs: BioTorch's
  frSF, Liao et al. 2016). This TRANSPORTS THE SIGNS of the forward weights (one bit per weight);
  layer-wise feedback only. :func:`sign_concordant`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .areas import normalized


FEEDBACK_MODES = ("direct", "layerwise", "stream")
FEEDBACK_ALIGNMENTS = ("fixed", "kolen_pollack", "sign")
FEEDBACK_SCOPES = ("shared", "area")


def feedback_shapes(hidden_sizes: list[int], num_labels: int, mode: str, num_areas: int = 1) -> list[tuple[int, ...]]:
    """Shape of ``B_l`` for every hidden layer (one matrix for all of them with ``stream``); with ``num_areas > 1``
    (per-area direct feedback) a leading K."""
    if mode == "stream":
        if len(set(hidden_sizes)) != 1 or num_areas > 1:
            raise ValueError(
                "Stream feedback sends one signal of the residual stream's width to every hidden layer: it needs equal "
                f"hidden sizes and one shared matrix; got hidden_sizes={hidden_sizes}, num_areas={num_areas}."
            )
        return [(num_labels, hidden_sizes[-1])]
    if mode == "direct":
        shapes = [(num_labels, d) for d in hidden_sizes]
    elif mode == "layerwise":
        if num_areas > 1:
            raise ValueError("Per-area feedback matrices exist for direct feedback only.")
        shapes = [(d_next, d) for d, d_next in zip(hidden_sizes, [*hidden_sizes[1:], num_labels])]
    else:
        raise ValueError(f"Unknown feedback mode {mode!r}; expected one of {FEEDBACK_MODES}.")
    return [(num_areas, *shape) if num_areas > 1 else shape for shape in shapes]


def make_feedback_matrix(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Kaiming-uniform (ReLU gain, fan-in ``shape[-1]``) draw from its own generator. A (K, C, d) stack of per-area
    matrices is one draw from the same stream, so its area 0 is the shared matrix of the same seed."""
    bound = math.sqrt(6.0 / shape[-1])
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.empty(shape, device="cpu").uniform_(-bound, bound, generator=generator)


def stream_signal(error: torch.Tensor, matrix: torch.Tensor, last_hidden: torch.Tensor, norm: str) -> torch.Tensor:
    """``g = J^T (e @ B)``, (B, d) fp32, no graph: the output error ``e`` (B, C) through the stream matrix ``B``
    (C, d), then back through the Jacobian of ``areas.normalized`` at ``last_hidden`` (B, d), the last hidden state.
    Reads no forward weight: with ``B`` equal to the output layer's weight and that layer's norm at its initial
    affine (scale 1, shift 0), ``g`` is exactly the gradient of the loss at ``h_L`` (tested)."""
    with torch.no_grad(), torch.autocast(error.device.type, enabled=False):  # fp32 even inside autocast
        g = error.float() @ matrix.float()
    if norm == "none":
        return g
    with torch.enable_grad(), torch.autocast(error.device.type, enabled=False):
        hidden = last_hidden.detach().float().requires_grad_(True)
        (g,) = torch.autograd.grad(normalized(hidden, norm), hidden, grad_outputs=g)
    return g


def feedback_signal(source: torch.Tensor, matrix: torch.Tensor, area: torch.Tensor | None = None) -> torch.Tensor:
    """``g = source @ B``, (B, d) in ``source``'s dtype, no graph. For a per-area stack ``B`` (K, C, d) each row uses
    the matrix of its own area: ``g_i = source_i @ B[area_i]``."""
    with torch.no_grad():
        matrix = matrix.to(source.dtype)
        if matrix.dim() == 2:
            return source @ matrix
        if area is None:
            raise ValueError("Per-area feedback matrices need the area each sample selected; got area=None.")
        if matrix.shape[0] <= matrix.shape[1]:  # K <= C: every area's signal, (B, K, d), then each row keeps its own
            every = torch.einsum("bc,kcd->bkd", source, matrix)
            return every[torch.arange(source.shape[0], device=source.device), area]
        return torch.einsum("bc,bcd->bd", source, matrix[area])  # K > C: gather (B, C, d) matrices instead


def kolen_pollack_gradient(
    source: torch.Tensor,
    activity: torch.Tensor,
    matrix: torch.Tensor,
    decay: float,
    area: torch.Tensor | None = None,
) -> torch.Tensor:
    """The Kolen-Pollack update of one feedback matrix: ``source^T activity + decay * matrix``.

    Args:
        source: the signal ``B_l`` carries, (B, C) for direct feedback (the output error ``e``, already a batch
            mean) or (B, d_{l+1}) for layer-wise feedback (``delta_{l+1}``).
        activity: ``h_l``, the output of hidden layer l, (B, d_l).
        matrix: ``B_l`` itself (for the decay), shaped (source size, d_l), or (K, C, d_l) per area.
        decay: ``lambda``.
        area: (B,) long, the area of each row; only for a per-area stack, whose ``B_l[k]`` gets the outer product
            of area k's rows alone and the decay times their share ``n_k / B``: an area no row selected gets an
            exact zero.

    Returns:
        ``matrix``'s shape, fp32, no graph. Only local quantities: no forward weight is read.
    """
    with torch.no_grad():
        if matrix.dim() == 3:
            if area is None:
                raise ValueError("Per-area feedback matrices need the area each sample selected; got area=None.")
            routed = torch.nn.functional.one_hot(area, matrix.shape[0]).float()  # (B, K)
            update = torch.einsum("bk,bc,bd->kcd", routed, source.float(), activity.float())
            if decay:
                # Each row decays its own area's matrix by decay / B: the area's share n_k / B of the decay (zero for
                # an area no row selected; the shared matrix's full decay summed over the areas). A share, not an
                # indicator: DDP averages the ranks' gradients, and shares average to the share of the whole batch.
                share = routed.mean(0)[:, None, None]  # (K, 1, 1), no host sync
                update = update + decay * matrix.float() * share
        else:
            update = source.float().t() @ activity.float()  # (C or d_{l+1}, d_l)
            if decay:
                update = update + decay * matrix.float()
        return update.to(matrix.dtype)


def kolen_pollack_updates(
    sources: list[torch.Tensor],
    activities: list[torch.Tensor],
    matrices: list[torch.Tensor],
    decay: float,
    areas: list[torch.Tensor | None] | None = None,
) -> list[torch.Tensor]:
    """:func:`kolen_pollack_gradient` of every learnable feedback matrix (rows of ``sources[l]`` and
    ``activities[l]`` pair up: samples, or tokens; ``areas[l]`` the rows' areas, for per-area matrices), for the
    MLP's rule and the transformer's alike. Refuses frozen matrices: the update would be lost."""
    if not (len(sources) == len(activities) == len(matrices)):
        raise ValueError(f"Got {len(sources)} signals and {len(activities)} activities for {len(matrices)} matrices.")
    areas = [None] * len(matrices) if areas is None else areas
    updates = []
    for source, activity, matrix, area in zip(sources, activities, matrices, areas):
        if not matrix.requires_grad:
            raise ValueError(
                "Kolen-Pollack feedback needs learnable feedback matrices; got a tensor without requires_grad. Build "
                "the model with feedback_alignment='kolen_pollack'."
            )
        updates.append(kolen_pollack_gradient(source, activity, matrix, decay, area))
    return updates


def sign_concordant(magnitude: torch.Tensor, forward_weight: torch.Tensor) -> torch.Tensor:
    """``|magnitude| * sign(forward_weight)``, no graph: feedback that copies the forward weights' signs (frSF).
    Both (d_{l+1}, d_l). Reads (the signs of) the forward weights: this is weight transport of one bit per weight."""
    with torch.no_grad():
        return magnitude.abs() * torch.sign(forward_weight.detach().to(magnitude.dtype))


class FeedbackMatrices(nn.Module):
    """The ``B_l`` of every hidden layer, ``layer_0``, ``layer_1``, ...: persistent buffers (frozen), or
    parameters when ``learned`` (Kolen-Pollack: the local rule supplies their gradient, the optimizer steps them,
    checkpoints save them under ``feedback.layer_<l>`` either way).

    Args:
        hidden_sizes: units of each hidden layer.
        num_labels: number of output classes C.
        mode: ``"direct"``, ``"layerwise"`` or ``"stream"`` (one matrix for every layer).
        seed: base seed; layer l uses ``seed + l``.
        learned: register the matrices as ``nn.Parameter`` (starting from the same random draw).
        num_areas: 1 (one matrix per layer, shared by its areas) or K (per-area direct feedback: (K, C, d_l)).
        identity: frozen identity matrices instead of the random draw (square shapes only: the SAL transformer's
            ``feedback_alignment="identity"``, which sends the error at the final hidden state to every block as it is).
        gain: multiplies the random draw (``SALConfig.feedback_gain``).
    """

    def __init__(
        self,
        hidden_sizes: list[int],
        num_labels: int,
        mode: str = "direct",
        seed: int = 1,
        learned: bool = False,
        num_areas: int = 1,
        identity: bool = False,
        gain: float = 1.0,
    ) -> None:
        super().__init__()
        self.gain = gain
        self.mode = mode
        self.seed = seed
        self.learned = learned
        self.num_areas = num_areas
        self.identity = identity
        self.shapes = feedback_shapes(hidden_sizes, num_labels, mode, num_areas)
        if identity and (learned or any(len(shape) != 2 or shape[0] != shape[1] for shape in self.shapes)):
            raise ValueError(f"Identity feedback needs frozen square matrices; got shapes {self.shapes}.")
        for index, shape in enumerate(self.shapes):
            if learned:
                self.register_parameter(f"layer_{index}", nn.Parameter(torch.empty(shape)))
            else:
                self.register_buffer(f"layer_{index}", torch.empty(shape))
        self.reset_parameters()

    def extra_repr(self) -> str:
        gain = "" if self.gain == 1.0 else f", gain={self.gain:g}"
        return f"mode={self.mode!r}, learned={self.learned}, identity={self.identity}{gain}, shapes={self.shapes}"

    def initial_values(self) -> dict[str, torch.Tensor]:
        if self.identity:
            return {f"layer_{i}": torch.eye(shape[0], device="cpu") for i, shape in enumerate(self.shapes)}
        return {
            f"layer_{i}": self.gain * make_feedback_matrix(shape, self.seed + i) for i, shape in enumerate(self.shapes)
        }

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for name, value in self.initial_values().items():
            getattr(self, name).copy_(value)

    def matrices(self) -> list[torch.Tensor]:
        return [getattr(self, f"layer_{i}") for i in range(len(self.shapes))]
