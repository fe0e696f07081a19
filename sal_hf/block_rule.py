"""The block-local learning rule of the SAL transformer: direct feedback to every block, as one surrogate scalar.

Pure torch. Paper: SAL, arXiv 2601.21561; the transformer placement follows Launay et al. 2020, "Direct Feedback
Alignment Scales to Modern Deep Learning Tasks and Architectures". Symbols (SAL-METHOD.md section 5) and the
arguments that carry them:

    L       the loss (mean cross-entropy over the positions that count)    -> ``loss``
    h_L     final hidden state, input of the final norm and the head,
            a detached leaf so that the head's graph ends there            -> ``head_input``, (B, T, d)
    z       logits                                                         -> ``logits``, (B, T, V) or (B, C)
    e_t     the error of token t: dL/dh_L,t (``error_source="hidden"``,
            true backprop through the final norm and the head only) or
            dL/dz_t = (softmax(z_t) - onehot(y_t)) / N (``"vocab"``)        -> :func:`final_error`
    o_l     the output of feedback point l (a block output, or also the
            attention sublayer's with ``feedback_points="micro"``), with a
            graph inside its block only                                    -> ``points[l]``, (B, T, d)
    B_l     the feedback matrix of point l, (d_e, d): the identity, a
            fixed random draw, or learned by direct Kolen-Pollack
            (``feedback_alignment``)                                      -> ``feedback[l]``
    delta_l = e_t B_l, per token                                           -> :func:`point_deltas`
    grad B_l = sum_t e_t^T o_l,t + lambda B_l (Kolen-Pollack only)         -> :func:`kolen_pollack_terms`

Positions whose label is -100 (and padding, which the collator labels -100) are absent from ``L``, so their
``e_t`` and every ``delta_l`` there are exactly zero. The surrogate's *value* is ``L``; its *gradient* is the
true gradient of the head and final norm (from ``L``'s own graph, which starts at the detached ``h_L``) plus, for
every point, the gradient of ``sum_t <o_l,t, delta_l,t>``: inside a block, autograd carries ``delta_l`` to the
attention, norms, the selected areas and the shared path; nothing crosses a block boundary because each block
read a detached input (block 0 reads the embedding, which therefore learns from block 0's signal).

With ``feedback_alignment="kolen_pollack"`` (direct Kolen-Pollack, Webster et al. 2020, "Learning the connections in
direct feedback alignment") the surrogate also gives every learnable ``B_l`` the gradient
``sum_t e_t^T o_l,t + lambda B_l``: the outer product of the signal it carries and the activity it carries it to,
summed over the tokens (``e`` already holds the ``1/N`` of the mean loss, and is zero where nothing counts). Local
signals only: no forward weight is read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .feedback import kolen_pollack_updates
from .learning_rule import injected_gradient


BLOCK_RULES = ("sal", "dfa")
ERROR_SOURCES = ("hidden", "vocab")
# `feedback.FEEDBACK_ALIGNMENTS` less `sign`, which needs layer-wise feedback (the transformer's is direct), plus
# `identity`: every point receives the error at the final hidden state itself (B_l = I, `error_source="hidden"`).
BLOCK_FEEDBACK_ALIGNMENTS = ("fixed", "kolen_pollack", "identity")


def final_error(
    loss: torch.Tensor,
    *,
    source: str,
    head_input: torch.Tensor | None = None,
    logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """``e``: the gradient of ``loss`` at the final hidden state (``source="hidden"``, (B, T, d)) or at the
    logits (``"vocab"``: (B, T, V) for a language model; (B, C) for a classifier, placed by
    :func:`point_deltas` at ``pooled_positions``). fp32, no graph; ``loss``'s graph is kept for the surrogate.

    Args:
        loss: the mean loss, with a graph to the head (and to ``head_input``).
        source: ``"hidden"`` or ``"vocab"``.
        head_input: ``h_L``, a leaf that requires grad (``"hidden"``).
        logits: ``z`` (``"vocab"``).
    """
    if source not in ERROR_SOURCES:
        raise ValueError(f"error_source must be one of {ERROR_SOURCES}; got {source!r}.")
    target = head_input if source == "hidden" else logits
    if target is None:
        raise ValueError(
            f"error_source={source!r} needs the model's {'head_input' if source == 'hidden' else 'logits'}."
        )
    (error,) = torch.autograd.grad(loss, target, retain_graph=True)
    return error.detach().float()


def point_deltas(
    error: torch.Tensor,
    feedback: Sequence[torch.Tensor],
    *,
    sequence_length: int | None = None,
    pooled_positions: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """``delta_l = e B_l`` for every feedback point, (B, T, d) fp32, no graph.

    Args:
        error: ``e``, (B, T, d_e), or (B, d_e) for a classifier's pooled error.
        feedback: ``B_l``, (d_e, d) each.
        sequence_length: T, when ``error`` is pooled.
        pooled_positions: (B,) the position each pooled error belongs to (the classifier's last token).
    """
    deltas = []
    with torch.no_grad():
        for matrix in feedback:
            delta = error @ matrix.to(error.dtype)  # (B, T, d) or (B, d)
            if delta.dim() == 2:
                if pooled_positions is None or sequence_length is None:
                    raise ValueError("A pooled (B, d_e) error needs pooled_positions and sequence_length.")
                full = delta.new_zeros(delta.shape[0], sequence_length, delta.shape[1])  # (B, T, d)
                full[torch.arange(delta.shape[0], device=delta.device), pooled_positions] = delta
                delta = full
            deltas.append(delta)
    return deltas


def token_errors(
    error: torch.Tensor, *, sequence_length: int | None = None, pooled_positions: torch.Tensor | None = None
) -> torch.Tensor:
    """``e_t`` of every token, (B, T, d_e) fp32, no graph: ``error`` itself, or a classifier's pooled (B, d_e)
    error placed at ``pooled_positions`` (zeros elsewhere), as :func:`point_deltas` places its deltas."""
    with torch.no_grad():
        if error.dim() == 3:
            return error
        if pooled_positions is None or sequence_length is None:
            raise ValueError("A pooled (B, d_e) error needs pooled_positions and sequence_length.")
        full = error.new_zeros(error.shape[0], sequence_length, error.shape[1])  # (B, T, d_e)
        full[torch.arange(error.shape[0], device=error.device), pooled_positions] = error
        return full


def kolen_pollack_terms(
    error: torch.Tensor,
    points: Sequence[torch.Tensor],
    feedback: Sequence[torch.Tensor],
    *,
    decay: float,
    pooled_positions: torch.Tensor | None = None,
) -> torch.Tensor | float:
    """Direct Kolen-Pollack: a zero-valued term whose gradient w.r.t. every learnable ``B_l`` is
    ``sum_t e_t^T o_l,t + decay * B_l`` (``feedback.kolen_pollack_gradient`` with the tokens as rows).

    Args:
        error: ``e``, (B, T, d_e), or (B, d_e) for a classifier's pooled error.
        points: ``o_l``, (B, T, d) each (only their values are read).
        feedback: ``B_l``, (d_e, d) each, parameters.
        decay: ``lambda``.
        pooled_positions: (B,) the position each pooled error belongs to.

    Local quantities only: the error, each point's own output and ``B_l``; no forward weight is read.
    """
    if len(points) != len(feedback):
        raise ValueError(f"Got {len(feedback)} feedback matrices for {len(points)} feedback points.")
    rows = token_errors(error, sequence_length=points[0].shape[1], pooled_positions=pooled_positions)
    rows = rows.reshape(-1, rows.shape[-1])  # (N, d_e): padding and ignored tokens are zero rows
    activities = [point.detach().reshape(-1, point.shape[-1]) for point in points]  # (N, d) each
    return injected_gradient(
        list(feedback), kolen_pollack_updates([rows] * len(points), activities, list(feedback), decay)
    )


def block_local_surrogate(
    loss: torch.Tensor,
    points: Sequence[torch.Tensor],
    deltas: Sequence[torch.Tensor],
    *,
    extra_terms: Sequence[torch.Tensor] = (),
) -> torch.Tensor:
    """A scalar equal to ``loss`` whose gradient is the block-local update: ``loss``'s own graph (the head and
    final norm, from a detached ``h_L``), plus ``delta_l`` injected at every point ``o_l``, plus the routers'
    local objectives ``extra_terms`` (gradient only)."""
    if len(points) != len(deltas):
        raise ValueError(f"Got {len(deltas)} deltas for {len(points)} feedback points.")
    return loss.float() + injected_gradient(points, deltas, extra_terms)


class BlockLocalRule:
    """Stateless wrapper holding the rule's settings; turns a SAL transformer's local forward into a surrogate.

    Args:
        rule: ``"sal"`` or ``"dfa"`` (the same update; the names tell areas from a dense baseline).
        error_source: ``"hidden"`` or ``"vocab"``.
        routing_loss_weight: weight of the routers' local objectives.
        feedback_alignment: ``"fixed"``, ``"kolen_pollack"`` (the rule also supplies the feedback matrices'
            gradient, :func:`kolen_pollack_terms`) or ``"identity"`` (the model's matrices are identities; the rule
            itself is unchanged).
        feedback_decay: ``lambda`` of the Kolen-Pollack update.
    """

    def __init__(
        self,
        rule: str,
        *,
        error_source: str = "hidden",
        routing_loss_weight: float = 1.0,
        feedback_alignment: str = "fixed",
        feedback_decay: float = 0.0,
    ) -> None:
        if rule not in BLOCK_RULES:
            raise ValueError(f"Got rule={rule!r}; a block-local rule is one of {BLOCK_RULES} ('bp' uses autograd).")
        if error_source not in ERROR_SOURCES:
            raise ValueError(f"Got error_source={error_source!r}; expected one of {ERROR_SOURCES}.")
        if feedback_alignment not in BLOCK_FEEDBACK_ALIGNMENTS:
            raise ValueError(
                f"Got feedback_alignment={feedback_alignment!r}; expected one of {BLOCK_FEEDBACK_ALIGNMENTS}."
            )
        self.rule = rule
        self.error_source = error_source
        self.routing_loss_weight = routing_loss_weight
        self.feedback_alignment = feedback_alignment
        self.feedback_decay = feedback_decay

    def error(self, outputs) -> torch.Tensor:
        """``e`` for a model's local forward (see :func:`final_error`)."""
        return final_error(outputs.loss, source=self.error_source, head_input=outputs.head_input, logits=outputs.logits)

    def surrogate(self, outputs, labels: torch.Tensor | None, feedback: Sequence[torch.Tensor]) -> torch.Tensor:
        """The surrogate of a SAL transformer's ``forward(..., labels=..., local=True)``: ``outputs`` carries
        ``loss``, ``logits``, ``head_input``, ``feedback_outputs``, ``routing_losses`` and, for a classifier,
        ``pooled_positions``. ``labels`` already shaped ``loss``; the signature matches the MLP rule's."""
        if outputs.loss is None:
            raise ValueError("The local rule needs the loss: call the model with labels and local=True.")
        points = outputs.feedback_outputs
        error = self.error(outputs)
        pooled_positions = getattr(outputs, "pooled_positions", None)
        deltas = point_deltas(error, feedback, sequence_length=points[0].shape[1], pooled_positions=pooled_positions)
        extra = [self.routing_loss_weight * term for term in (outputs.routing_losses or ())]
        if self.feedback_alignment == "kolen_pollack":
            extra.append(
                kolen_pollack_terms(
                    error, points, feedback, decay=self.feedback_decay, pooled_positions=pooled_positions
                )
            )
        return block_local_surrogate(outputs.loss, points, deltas, extra_terms=extra)


def block_alignment_angles(
    model: torch.nn.Module,
    rule: BlockLocalRule,
    blocks: Sequence[torch.nn.Module],
    feedback: Sequence[torch.Tensor],
    **inputs: torch.Tensor,
) -> list[float]:
    """Per block, the angle in degrees between the local update and the backpropagation gradient of the block's
    parameters (routers excluded: backpropagation cannot train them), on one batch. 0 = the local rule follows the
    gradient, 90 = unrelated. A diagnostic for the benchmark; call it on a model in eval mode (no routing
    statistics are gathered then).

    Args:
        model: a SAL transformer with a head (its forward takes ``labels`` and ``local``).
        rule: the rule the trainer applies.
        blocks: the model's blocks, in order (``model.model.layers``).
        feedback: the model's feedback matrices (``model.feedback_matrices()``).
        **inputs: the batch, with ``labels``.
    """
    groups = [[p for name, p in block.named_parameters() if ".router." not in f".{name}"] for block in blocks]
    params = [p for group in groups for p in group]
    with torch.enable_grad():
        surrogate = rule.surrogate(model(**inputs, local=True), inputs.get("labels"), feedback)
        local = torch.autograd.grad(surrogate, params, allow_unused=True)
        backprop = torch.autograd.grad(model(**inputs).loss, params, allow_unused=True)
    angles, start = [], 0
    for group in groups:
        end = start + len(group)
        # An area that no token selected has no gradient under either rule: it counts as zeros.
        a, b = (
            torch.cat([(g if g is not None else torch.zeros_like(p)).flatten().float() for g, p in zip(grads, group)])
            for grads in (local[start:end], backprop[start:end])
        )
        cosine = float(a @ b) / max(float(a.norm() * b.norm()), 1e-30)
        angles.append(math.degrees(math.acos(max(-1.0, min(1.0, cosine)))))
        start = end
    return angles


__all__ = [
    "BlockLocalRule",
    "block_alignment_angles",
    "block_local_surrogate",
    "final_error",
    "kolen_pollack_terms",
    "point_deltas",
    "token_errors",
]
