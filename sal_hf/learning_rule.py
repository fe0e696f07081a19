"""The SAL / DFA / FA learning rule as a surrogate scalar, local to each layer.

Pure torch. Paper: "SAL: Selective Adaptive Learning for Backpropagation-Free Training with
Sparsification", Liu, Yang, Zou, arXiv 2601.21561. Symbols of the method (see shared SAL-METHOD.md) and the
arguments that carry them:

    z      logits, (B, C)                       -> ``logits``
    y      labels, (B,)                         -> ``labels``
    e      output error softmax(z) - onehot(y),
           divided by B (gradient of mean CE)   -> :func:`output_error`
    a_l    pre-activation of hidden layer l     -> ``pre_activations[l]``, (B, d_l)
    f'     derivative of the activation         -> ``activations.activation_derivative``
    B_l    random feedback of layer l (fixed,
           or learned by Kolen-Pollack)         -> ``feedback[l]`` (see feedback.py for shapes)
    delta_l = (g_l) * f'(a_l), with g_l = e @ B_l (direct) or delta_{l+1} @ B_l (layerwise), or for every
           layer g = J_L^T (e @ B) (stream: the signal at the last hidden state h_L, see feedback.stream_signal)
           (a residual block h_l = h_{l-1} + s f(a_l) has dh_l/da_l = s f'(a_l), so delta_l gets the
           factor s; layerwise feedback also carries the skip path: g_l = delta_{l+1} @ B_l + g_{l+1})
    k*     area a sample selected at layer l    -> ``areas[l]``, (B,) long, or None when K = 1

The update of the selected area's weights is ``grad W_l[k*] = sum_{i routed to k*} delta_l,i x_l,i^T``
(averaged over the batch; ``SALConfig.area_update_norm="area"`` averages over the area's own samples, which the
model applies to the area parameters alone, see ``areas.SALAreaLinear``'s ``grad_scale``), and the output layer
gets the true gradient ``e^T h_L``. :func:`surrogate_loss` returns a scalar whose *value* is the ordinary
loss and whose *gradient* is exactly that update: every ``a_l`` was computed from a detached input, each
``delta_l`` is a constant, so autograd never leaves a layer. With the split area kernel an area that no sample
selected is not in the graph at all and gets no ``.grad`` (None, not zero); the masked kernel (the default on CUDA
for K <= 64) hands it a zero gradient, which ``optim.clear_unselected_area_grads`` removes before the step, so
optimizers leave it untouched either way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.nn import functional as F

from .activations import activation_derivative
from .areas import NORMS, normalized
from .feedback import FEEDBACK_ALIGNMENTS, FEEDBACK_MODES, feedback_signal, kolen_pollack_updates, stream_signal


LOCAL_RULES = ("sal", "dfa", "fa")


def output_error(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``e = (softmax(z) - onehot(y)) / B``, the gradient of the mean cross-entropy w.r.t. the logits.
    (B, C) fp32, no graph."""
    with torch.no_grad():
        probs = torch.softmax(logits.float(), dim=-1)  # (B, C)
        return (probs - F.one_hot(labels.long(), probs.shape[-1]).to(probs.dtype)) / probs.shape[0]


def gate(signal: torch.Tensor, pre_activation: torch.Tensor, activation: Callable, scale: float = 1.0) -> torch.Tensor:
    """``scale * signal * f'(a)``, (B, d) fp32, no graph."""
    with torch.no_grad():
        derivative = activation_derivative(activation, pre_activation)
        if scale != 1.0:
            derivative = derivative * scale  # (this order keeps earlier results bit for bit)
        return signal * derivative


class _InjectGradient(torch.autograd.Function):
    """A zero scalar whose gradient w.r.t. ``output`` is ``signal``: the gradient of ``(output * signal).sum()``
    without computing that product in the forward (its value is never used: the surrogate's value is the loss)."""

    @staticmethod
    def forward(ctx, output: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(signal)
        ctx.output_dtype = output.dtype
        return torch.zeros((), dtype=torch.float32, device=output.device)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (signal,) = ctx.saved_tensors
        return (signal * grad).to(ctx.output_dtype), None


def local_deltas(
    error: torch.Tensor,
    pre_activations: Sequence[torch.Tensor],
    feedback: Sequence[torch.Tensor],
    *,
    mode: str,
    activation: Callable[[torch.Tensor], torch.Tensor],
    residual: bool = False,
    residual_scale: float = 1.0,
    areas: Sequence[torch.Tensor | None] | None = None,
    last_hidden: torch.Tensor | None = None,
    norm: str = "none",
) -> list[torch.Tensor]:
    """Local error ``delta_l`` of every hidden layer, (B, d_l) fp32, no graph.

    Args:
        error: ``e``, (B, C).
        pre_activations: ``a_l`` per hidden layer.
        feedback: ``B_l`` per hidden layer: (C, d_l) for ``direct``, (d_{l+1}, d_l) for ``layerwise``; or per-area
            direct matrices (K, C, d_l), each sample using its area's (``areas``).
        mode: ``"direct"`` (DFA), ``"layerwise"`` (FA) or ``"stream"`` (one matrix, (C, d), whose signal at the
            last hidden state every layer receives).
        activation: the hidden activation ``f``.
        residual: hidden layers after the first are residual blocks (only changes ``layerwise``: the signal at
            a block's input is the signal at its output plus the feedback of its own delta).
        residual_scale: ``s`` of the residual blocks, ``h_l = h_{l-1} + s f(a_l)``.
        areas: the area each sample selected at each hidden layer, (B,) long (only read for per-area matrices).
        last_hidden: ``h_L``, the last hidden layer's output (B, d) (only read by ``stream``).
        norm: the normalisation the output layer applies to ``h_L`` (only read by ``stream``).
    """
    stream = None  # the one signal every layer receives with stream feedback
    if mode == "stream":
        if len(feedback) != 1 or last_hidden is None:
            raise ValueError(
                f"Stream feedback needs one matrix and the last hidden state; got {len(feedback)} matrices and "
                f"last_hidden={'None' if last_hidden is None else 'a tensor'}."
            )
        stream = stream_signal(error, feedback[0], last_hidden, norm)
    elif len(feedback) != len(pre_activations):
        raise ValueError(f"Got {len(feedback)} feedback matrices for {len(pre_activations)} hidden layers.")
    deltas: list[torch.Tensor] = [None] * len(pre_activations)  # type: ignore[list-item]
    signal = error
    carried = None  # g_{l+1}, the signal at the next block's output (layerwise + residual)
    with torch.no_grad():
        for index in reversed(range(len(pre_activations))):
            source = error if mode == "direct" else signal
            if stream is not None:
                g = stream
            else:
                g = feedback_signal(source, feedback[index], areas[index] if areas is not None else None)  # (B, d_l)
            if carried is not None:
                g = g + carried
            scale = residual_scale if residual and index >= 1 else 1.0
            deltas[index] = gate(g, pre_activations[index], activation, scale)
            signal = deltas[index]
            # Block index (index >= 1) passes its output signal straight to its input h_{index-1}.
            carried = g if residual and mode == "layerwise" and index >= 1 else None
    return deltas


def layer_outputs(
    pre_activations: Sequence[torch.Tensor],
    activation: Callable[[torch.Tensor], torch.Tensor],
    *,
    residual: bool = False,
    residual_scale: float = 1.0,
) -> list[torch.Tensor]:
    """``h_l`` of every hidden layer from the pre-activations alone, (B, d_l) fp32, no graph: ``f(a_l)``, or
    ``h_{l-1} + s f(a_l)`` for the residual blocks (every hidden layer after the first)."""
    outputs: list[torch.Tensor] = []
    with torch.no_grad():
        for index, a in enumerate(pre_activations):
            h = activation(a.detach().float())
            if residual and index >= 1:
                h = outputs[-1] + residual_scale * h
            outputs.append(h)
    return outputs


def feedback_terms(
    error: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    activities: Sequence[torch.Tensor],
    feedback: Sequence[torch.Tensor],
    *,
    mode: str,
    decay: float,
    areas: Sequence[torch.Tensor | None] | None = None,
    norm: str = "none",
) -> list[torch.Tensor]:
    """Kolen-Pollack: one zero-valued term per learnable ``B_l`` whose gradient w.r.t. ``B_l`` is
    ``s_l^T h_l + decay * B_l`` (see ``feedback.kolen_pollack_gradient``), with ``s_l = e`` (direct) or
    ``delta_{l+1}`` (layer-wise; ``e`` for the last hidden layer); per-area matrices sum over their area's samples
    (``areas``). ``stream``'s one matrix gets ``e^T normalized(h_L) + decay * B``: the gradient the output layer's
    weight gets from the same error (its input, before the norm's affine). Local quantities only."""
    if mode == "stream":
        sources, activities, areas = [error], [normalized(activities[-1], norm)], None
    else:
        sources = [error] * len(deltas) if mode == "direct" else [*deltas[1:], error]
    updates = kolen_pollack_updates(
        sources, list(activities), list(feedback), decay, list(areas) if areas is not None else None
    )
    return [_InjectGradient.apply(matrix, update) for matrix, update in zip(feedback, updates)]


def surrogate_loss(
    loss: torch.Tensor,
    logits: torch.Tensor,
    error: torch.Tensor,
    pre_activations: Sequence[torch.Tensor],
    deltas: Sequence[torch.Tensor],
    *,
    extra_terms: Sequence[torch.Tensor] = (),
) -> torch.Tensor:
    """A scalar equal to ``loss`` whose gradient is the local update.

    Args:
        loss: the ordinary loss (only its value is used).
        logits: ``z``, with a graph to the output layer only.
        error: ``e`` for the output layer (true error).
        pre_activations: ``a_l``, each with a graph to layer l only.
        deltas: ``delta_l`` (constants).
        extra_terms: further local objectives (the routers' own losses), added to the gradient only.
    """
    return loss.detach().float() + injected_gradient([*pre_activations, logits], [*deltas, error], extra_terms)


def injected_gradient(
    outputs: Sequence[torch.Tensor], signals: Sequence[torch.Tensor], extra_terms: Sequence[torch.Tensor] = ()
) -> torch.Tensor | float:
    """A scalar of value 0 whose gradient puts ``signals[i]`` (a constant) on ``outputs[i]`` (the gradient of
    ``sum_i (outputs[i] * signals[i]).sum()``) and adds the gradients of ``extra_terms``: the local update that
    every surrogate of this package (the MLP's, the transformer's) adds to its loss. ``0.0`` when there is nothing."""
    if len(outputs) != len(signals):
        raise ValueError(f"Got {len(signals)} signals for {len(outputs)} outputs.")
    terms = [_InjectGradient.apply(output, signal.detach()) for output, signal in zip(outputs, signals)]
    terms += [term.float() for term in extra_terms]
    if not terms:
        return 0.0
    local = torch.stack(terms).sum()
    return local - local.detach()


class LocalLearningRule:
    """Stateless wrapper holding the rule's settings; turns a model's local forward into a surrogate.

    Args:
        rule: ``"sal"``, ``"dfa"`` or ``"fa"``.
        feedback_mode: ``"direct"``, ``"layerwise"`` or ``"stream"``.
        activation: hidden activation ``f``.
        routing_loss_weight: weight of the routers' local objective.
        residual: the model's hidden layers after the first are residual blocks.
        residual_scale: their branch scale ``s``.
        feedback_alignment: ``"fixed"``, ``"kolen_pollack"`` (the rule also supplies the feedback matrices'
            gradient) or ``"sign"`` (the caller passes sign-concordant matrices; the rule itself is unchanged).
        feedback_decay: ``lambda`` of the Kolen-Pollack update.
        norm: the model's ``norm`` (``stream`` feedback goes through its parameter-free Jacobian at ``h_L``).
    """

    def __init__(
        self,
        rule: str,
        *,
        feedback_mode: str,
        activation: Callable[[torch.Tensor], torch.Tensor],
        routing_loss_weight: float = 1.0,
        residual: bool = False,
        residual_scale: float = 1.0,
        feedback_alignment: str = "fixed",
        feedback_decay: float = 0.0,
        norm: str = "none",
    ) -> None:
        if rule not in LOCAL_RULES:
            raise ValueError(f"Got rule={rule!r}; a local learning rule is one of {LOCAL_RULES} ('bp' uses autograd).")
        if feedback_alignment not in FEEDBACK_ALIGNMENTS:
            raise ValueError(f"Got feedback_alignment={feedback_alignment!r}; expected one of {FEEDBACK_ALIGNMENTS}.")
        if feedback_mode not in FEEDBACK_MODES or norm not in NORMS:
            raise ValueError(
                f"Got feedback_mode={feedback_mode!r}, norm={norm!r}; expected one of {FEEDBACK_MODES} and one of "
                f"{NORMS} (the model's `norm`: stream feedback goes through the output norm's Jacobian)."
            )
        self.feedback_alignment = feedback_alignment
        self.feedback_decay = feedback_decay
        self.rule = rule
        self.feedback_mode = feedback_mode
        self.activation = activation
        self.routing_loss_weight = routing_loss_weight
        self.residual = residual
        self.residual_scale = residual_scale
        self.norm = norm

    def __call__(
        self,
        *,
        loss: torch.Tensor,
        logits: torch.Tensor,
        labels: torch.Tensor,
        pre_activations: Sequence[torch.Tensor],
        feedback: Sequence[torch.Tensor],
        routing_losses: Sequence[torch.Tensor] = (),
        areas: Sequence[torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        error = output_error(logits, labels)
        activities = None
        if self.feedback_alignment == "kolen_pollack" or self.feedback_mode == "stream":
            activities = layer_outputs(
                pre_activations, self.activation, residual=self.residual, residual_scale=self.residual_scale
            )
        deltas = local_deltas(
            error,
            pre_activations,
            feedback,
            mode=self.feedback_mode,
            activation=self.activation,
            residual=self.residual,
            residual_scale=self.residual_scale,
            areas=areas,
            last_hidden=activities[-1] if self.feedback_mode == "stream" else None,
            norm=self.norm,
        )
        extra = [self.routing_loss_weight * term for term in routing_losses]
        if self.feedback_alignment == "kolen_pollack":
            extra += feedback_terms(
                error,
                deltas,
                activities,
                feedback,
                mode=self.feedback_mode,
                decay=self.feedback_decay,
                areas=areas,
                norm=self.norm,
            )
        return surrogate_loss(loss, logits, error, pre_activations, deltas, extra_terms=extra)

    def surrogate(self, outputs, labels: torch.Tensor, feedback: Sequence[torch.Tensor]) -> torch.Tensor:
        """The surrogate for a model's local forward: ``outputs`` carries ``loss``, ``logits``,
        ``pre_activations``, ``routing_losses`` and ``areas``, as ``SALForImageClassification(..., local=True)``
        returns them (an area's parameters are in the graph only for the samples it took; the areas are read only by
        per-area feedback matrices)."""
        areas = getattr(outputs, "areas", None)
        return self(
            loss=outputs.loss,
            logits=outputs.logits,
            labels=labels,
            pre_activations=outputs.pre_activations,
            feedback=feedback,
            routing_losses=outputs.routing_losses,
            areas=areas[: len(outputs.pre_activations)] if areas is not None else None,
        )
