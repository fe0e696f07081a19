"""Fixed random feedback: how the output error reaches hidden layers without weight transport.

Pure torch. Layer l (0-based, L hidden layers, d_l units) owns one frozen matrix ``B_l`` shaped like the
forward matrix that reads its output, and drawn like that matrix's initialisation (Kaiming uniform, fan-in
d_l), so the feedback signal has the scale of a backpropagated one:

- ``direct`` (DFA): ``B_l`` is (C, d_l) and the signal is ``g_l = e @ B_l``.
- ``layerwise`` (FA): ``B_l`` is (d_{l+1}, d_l), with d_L = C, and ``g_l = delta_{l+1} @ B_l``, where
  ``delta_{l+1}`` is the next hidden layer's local error. BP would use the forward ``W_{l+1}`` here.

The matrices are never derived from forward weights: they come from their own seeded generator, which also
makes them identical across devices and processes. One matrix per layer is shared by all areas (per-area
feedback measured 2.5-8 points worse, see the method notes).
"""

from __future__ import annotations

import math

import torch
from torch import nn


FEEDBACK_MODES = ("direct", "layerwise")


def feedback_shapes(hidden_sizes: list[int], num_labels: int, mode: str) -> list[tuple[int, int]]:
    """Shape of ``B_l`` for every hidden layer."""
    if mode == "direct":
        return [(num_labels, d) for d in hidden_sizes]
    if mode == "layerwise":
        return [(d_next, d) for d, d_next in zip(hidden_sizes, [*hidden_sizes[1:], num_labels])]
    raise ValueError(f"Unknown feedback mode {mode!r}; expected one of {FEEDBACK_MODES}.")


def make_feedback_matrix(shape: tuple[int, int], seed: int) -> torch.Tensor:
    """Kaiming-uniform (ReLU gain, fan-in ``shape[1]``) draw from its own generator."""
    bound = math.sqrt(6.0 / shape[1])
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.empty(shape, device="cpu").uniform_(-bound, bound, generator=generator)


class FeedbackMatrices(nn.Module):
    """The frozen ``B_l`` of every hidden layer, as persistent buffers ``layer_0``, ``layer_1``, ...

    Args:
        hidden_sizes: units of each hidden layer.
        num_labels: number of output classes C.
        mode: ``"direct"`` or ``"layerwise"``.
        seed: base seed; layer l uses ``seed + l``.
    """

    def __init__(self, hidden_sizes: list[int], num_labels: int, mode: str = "direct", seed: int = 1) -> None:
        super().__init__()
        self.mode = mode
        self.seed = seed
        self.shapes = feedback_shapes(hidden_sizes, num_labels, mode)
        for index, shape in enumerate(self.shapes):
            self.register_buffer(f"layer_{index}", torch.empty(shape))
        self.reset_parameters()

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, shapes={self.shapes}"

    def initial_values(self) -> dict[str, torch.Tensor]:
        return {f"layer_{i}": make_feedback_matrix(shape, self.seed + i) for i, shape in enumerate(self.shapes)}

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for name, value in self.initial_values().items():
            getattr(self, name).copy_(value)

    def matrices(self) -> list[torch.Tensor]:
        return [getattr(self, f"layer_{i}") for i in range(len(self.shapes))]
