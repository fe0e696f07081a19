"""Learned-frozen decoupled routing: which area each sample activates.

Pure torch. A learnable projection ``P`` maps the (centred) layer input into a routing space, frozen
unit-norm prototypes ``C`` in that space pick one area per sample by hard selection:

    k* = argmax_k  cos(P (x - mu), C[k]) + b[k]

``mu`` is a running mean of the router's input (without centring, learned routing collapses onto a
few areas) and ``b`` a per-area selection bias nudged towards balanced load after every optimizer step.
Neither ``mu`` nor ``b`` is trained by a gradient. ``P`` learns by a local rule only: the router's own
loss pulls ``P x`` towards the prototype it selected (competitive learning, a k-means-like step), so no
error signal crosses into the router from anywhere else.

Routing runs in fp32 whatever the autocast context: a bf16 cosine flips ties between areas.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from torch.nn import functional as F

from .areas import is_training_forward, process_count


def area_counts(area: torch.Tensor, num_areas: int) -> torch.Tensor:
    """Samples per area, (K,) long. Not `torch.bincount`: its output size depends on the data, so on CUDA it reads
    the input's range back to the host (a sync) and compiled it breaks the graph; a (B, K) comparison does neither."""
    return (area.unsqueeze(-1) == torch.arange(num_areas, device=area.device)).sum(0)


def seeded_normal(shape: tuple[int, ...], seed: int, std: float = 1.0) -> torch.Tensor:
    """Draw a CPU fp32 normal tensor from its own generator, so frozen tensors do not depend on the
    global RNG stream or the device (PEFT's VeRA does the same for its projections)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    # An explicit device: under a meta-device context (transformers' loading) this still draws real numbers.
    return torch.randn(shape, generator=generator, device="cpu") * std


def make_prototypes(num_areas: int, routing_dim: int, seed: int) -> torch.Tensor:
    """Frozen prototypes: ``num_areas`` random unit vectors in the routing space. Shape (K, d_r)."""
    return F.normalize(seeded_normal((num_areas, routing_dim), seed), dim=-1)


def make_projection(routing_dim: int, in_features: int, seed: int) -> torch.Tensor:
    """Initial routing projection ``P`` (d_r, d_in), variance-preserving like a forward layer."""
    return seeded_normal((routing_dim, in_features), seed, std=in_features**-0.5)


def gathered_rows(x: torch.Tensor) -> torch.Tensor:
    """Under ``torch.distributed`` with several processes, every process's (n_r, d) rows, concatenated in rank order
    (the processes may hold different numbers of rows); else ``x``. Every process must call it at the same point."""
    world = process_count()
    if world == 1:
        return x
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    torch.distributed.all_gather(sizes, torch.tensor([len(x)], device=x.device))
    sizes = [int(size) for size in sizes]
    padded = x.new_zeros(max(sizes), x.shape[1])
    padded[: len(x)] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


def statistics_dtype(device: torch.device) -> torch.dtype:
    """The routers' statistics' dtype on ``device``: float64, or float32 on Apple's MPS, which has no float64 (the
    per-step sums restart at every optimizer step, so float32 loses nothing routing could see; the area-health counts
    stay exact up to 2^24 samples an area between two logs)."""
    return torch.float32 if device.type == "mps" else torch.float64


class RouterBase:
    """What both routers share: floating buffers that never drop below fp32 when the model is cast, and the area health
    they report from ``logged_load`` (K,) float64 (float32 on MPS, `statistics_dtype`), the samples per area of the
    training forwards since the last read. Mixed in before ``nn.Module``. A router names its statistics (plain
    tensors, not buffers) in ``statistics``, and among them the sums gathered since the last optimizer step in
    ``pending``: a multi-process trainer sums those over the processes before :meth:`update_statistics`, so that every
    process moves its routing state alike."""

    statistics: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()
    # Training forwards whose sums wait for `update_statistics` (a trainer applies them once per optimizer step); a
    # loop that never does (a plain `transformers.Trainer`) is told so once, at this many.
    unapplied_warning: int = 1000
    _unapplied: int = 0

    def _count_training_forward(self) -> None:
        if torch.compiler.is_compiling():  # a Python counter would recompile a compiled forward at every step
            return
        self._unapplied += 1
        if self._unapplied == self.unapplied_warning:
            warnings.warn(
                f"{type(self).__name__}: {self._unapplied} training forwards since its routing statistics were last "
                "applied, so its running input mean and balancing bias (or prototypes) are not moving. Train with "
                "sal_hf.SALTrainer, or call model.update_routing_statistics() after every optimizer step.",
                stacklevel=3,
            )

    def _statistics_applied(self) -> None:
        self._unapplied = 0

    @torch.no_grad()
    def discard_pending(self) -> None:
        """Drop the sums gathered since the last `update_statistics` without applying them."""
        for name in self.pending:
            getattr(self, name).zero_()
        self._statistics_applied()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for name, value in self.initial_values().items():
            getattr(self, name).copy_(value)
        for name in self.statistics:
            getattr(self, name).zero_()

    def _statistics_on(self, device: torch.device) -> torch.dtype:
        """Move the statistics to ``device`` in its `statistics_dtype` (they are not buffers, so ``Module.to`` does
        not); returns that dtype."""
        dtype = statistics_dtype(device)
        if self.logged_load.device != device or self.logged_load.dtype != dtype:
            for name in self.statistics:
                setattr(self, name, getattr(self, name).to(device, dtype))
        return dtype

    def _apply(self, fn, recurse: bool = True):
        """``Module.to``, ``.half()``, ``.bfloat16()``, ...: the buffers follow the device but never drop below
        fp32. A cast to a lower precision keeps their fp32 values (the original tensor moved, not the rounded one)."""
        before = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, buffer in self._buffers.items():
            if buffer is None or not buffer.is_floating_point() or torch.finfo(buffer.dtype).bits >= 32:
                continue
            original = before[name]
            if torch.finfo(original.dtype).bits < 32:
                original = original.float()
            self._buffers[name] = original.to(buffer.device)
        return self

    @torch.no_grad()
    def health(self, min_samples_per_area: float = 4.0) -> dict[str, float] | None:
        """Area utilisation since the last report: ``min_share`` / ``max_share`` of the samples, ``dead`` areas (no
        sample) and ``samples`` (the window), then a new window starts. None while the window holds fewer than
        ``min_samples_per_area * K`` samples (batch size 1, or any batch far below K, logged often): the counts keep
        accumulating over the next reports, since a few samples say nothing about balance (with n < K samples at
        least K - n areas would look dead; with 4K samples a perfectly balanced router shows ~2% dead areas)."""
        total = float(self.logged_load.sum())
        if total < min_samples_per_area * self.num_areas:
            return None
        load = self.pop_load()
        share = load / total
        return {
            "min_share": round(float(share.min()), 4),
            "max_share": round(float(share.max()), 4),
            "dead": int((load == 0).sum()),
            "samples": int(total),
        }

    @torch.no_grad()
    def pop_load(self) -> torch.Tensor:
        """Samples routed to each area since the last call, (K,) float64 (float32 on MPS); resets the count."""
        load = self.logged_load.clone()
        self.logged_load.zero_()
        return load


class AreaRouter(RouterBase, nn.Module):
    """Hard router of one layer (or of the whole network when routing is shared).

    Args:
        in_features: size of the input that is routed.
        num_areas: number of areas K.
        routing_dim: size d_r of the routing space.
        learned: if True, ``projection`` is an ``nn.Parameter`` trained by :meth:`local_loss`; if False it
            is a frozen random buffer (the fixed-random-routing ablation).
        seed: seed of the prototypes and of the initial projection.
        balance_rate: step of the load-balancing bias per optimizer step.
        center_momentum: momentum of the running mean of the input.

    Buffers (all persistent, so checkpoints and resumes route identically): ``prototypes`` (K, d_r),
    ``input_mean`` (d_in), ``area_bias`` (K), ``num_updates`` (); the floating ones stay fp32 when the model is
    cast or loaded in a lower precision (``model.to(torch.bfloat16)``, ``from_pretrained(..., dtype=...)``). Accumulators (plain tensors, not buffers)
    gather what the training forwards (training mode with autograd on) of the current optimizer step saw until
    :meth:`update_statistics` applies it, so gradient accumulation over micro-batches routes exactly like one big
    batch.
    """

    pending = ("pending_input_sum", "pending_load")
    statistics = (*pending, "logged_load")

    def __init__(
        self,
        in_features: int,
        num_areas: int,
        routing_dim: int,
        *,
        learned: bool = True,
        seed: int = 0,
        balance_rate: float = 1e-3,
        center_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.num_areas = num_areas
        self.routing_dim = routing_dim
        self.learned = learned
        self.seed = seed
        self.balance_rate = balance_rate
        self.center_momentum = center_momentum

        # The buffers are fp32 whatever the default dtype (transformers builds a model loaded with `dtype=` under it,
        # and then keeps the dtype of each tensor it loads into) and whatever cast follows (see `_apply`): a
        # balancing step of 1e-3 on a bias near 1 rounds away in bf16. The learned projection is a weight like the
        # others and follows the model's dtype; routing computes in fp32 anyway (see `project`).
        if learned:
            self.projection = nn.Parameter(torch.empty(routing_dim, in_features))
        else:
            self.register_buffer("projection", torch.empty(routing_dim, in_features, dtype=torch.float32))
        self.register_buffer("prototypes", torch.empty(num_areas, routing_dim, dtype=torch.float32))
        self.register_buffer("input_mean", torch.empty(in_features, dtype=torch.float32))
        self.register_buffer("area_bias", torch.empty(num_areas, dtype=torch.float32))
        self.register_buffer("num_updates", torch.empty((), dtype=torch.long))
        # Statistics, not model state, so plain attributes and not buffers: DDP (`broadcast_buffers=True`) copies
        # rank 0's buffers to every rank before each forward, which would overwrite each rank's own counts. They
        # follow the input's device (see `_statistics_on`). Since the last optimizer step: the sum of the inputs
        # and the samples per area; since the last read of the area health (see :meth:`pop_load`): samples per area.
        # An explicit device: under transformers' meta-device loading these must still hold real zeros.
        self.pending_input_sum = torch.zeros(in_features, dtype=torch.float64, device="cpu")
        self.pending_load = torch.zeros(num_areas, dtype=torch.float64, device="cpu")
        self.logged_load = torch.zeros(num_areas, dtype=torch.float64, device="cpu")
        self.reset_parameters()

    def initial_values(self) -> dict[str, torch.Tensor]:
        """Fresh value of every parameter and buffer, by attribute name (CPU tensors). Deterministic
        given ``seed``; the Hugging Face shell copies them in without overwriting loaded ones."""
        return {
            "projection": make_projection(self.routing_dim, self.in_features, self.seed),
            "prototypes": make_prototypes(self.num_areas, self.routing_dim, self.seed + 1),
            **{
                name: torch.zeros_like(getattr(self, name), device="cpu")
                for name in ("input_mean", "area_bias", "num_updates")
            },
        }

    def summary(self) -> str:
        """One line for `sal-hf info`."""
        bias = self.area_bias
        return (
            f"K={self.num_areas}, in={self.in_features}, updates={int(self.num_updates)}, "
            f"balancing bias in [{float(bias.min()):+.4f}, {float(bias.max()):+.4f}]"
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_areas={self.num_areas}, routing_dim={self.routing_dim}, "
            f"learned={self.learned}"
        )

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm routing vectors ``P (x - mu)``, in fp32. (B, d_in) -> (B, d_r)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            centred = x.float() - self.input_mean.float()
            return F.normalize(F.linear(centred, self.projection.float()), dim=-1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Route a batch.

        Args:
            x: (..., d_in) router input, one row per sample or token (a (B, T, d) batch of tokens routes each token
                on its own hidden state). It is detached: routing never passes a gradient back.
            mask: optional, the shape of ``x`` without its last dimension, bool: rows left out of the statistics
                (padding tokens still get an area, but move no running mean, balancing bias or area health).

        Returns:
            ``(area, routed)``: area index per row, (...) long; routing vectors, (..., d_r) fp32, with a graph to
            ``projection`` only (for :meth:`local_loss`).
        """
        if x.dim() != 2:
            lead = x.shape[:-1]
            area, routed = self(x.reshape(-1, x.shape[-1]), mask.reshape(-1) if mask is not None else None)
            return area.view(lead), routed.view(*lead, -1)
        x = x.detach()
        training = is_training_forward(self)  # read before the no_grad block below
        routed = self.project(x)  # (B, d_r)
        with torch.no_grad():
            scores = routed @ self.prototypes.float().T + self.area_bias.float()  # (B, K)
            area = scores.argmax(dim=-1)
            if training:
                dtype = self._statistics_on(x.device)
                if mask is None:
                    self.pending_input_sum += x.sum(dim=0, dtype=dtype)
                    load = area_counts(area, self.num_areas).to(dtype)
                else:  # weighted sums, not boolean indexing (no host sync)
                    keep = mask.to(dtype).unsqueeze(-1)  # (B, 1)
                    # where, not a product: a padding row that is not finite (a fully masked attention row of some
                    # kernels, an fp16 overflow) must not reach the sum (NaN * 0 is NaN).
                    self.pending_input_sum += torch.where(keep.bool(), x.to(dtype), 0.0).sum(dim=0)
                    load = ((area.unsqueeze(-1) == torch.arange(self.num_areas, device=area.device)) * keep).sum(0)
                self.pending_load += load
                self.logged_load += load
                self._count_training_forward()
        return area, routed

    def local_loss(self, routed: torch.Tensor, area: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The router's own objective: ``mean_i (1 - cos(P x_i, C[k*_i]))``, over the rows ``mask`` keeps (all when
        None). Its gradient reaches ``projection`` alone and pulls each routing vector towards the prototype it
        selected."""
        per_row = 1.0 - (routed * self.prototypes.float()[area]).sum(dim=-1)
        if mask is None:
            return per_row.mean()
        mask = mask.to(per_row.dtype)
        return (per_row * mask).sum() / mask.sum().clamp(min=1.0)

    @torch.no_grad()
    def update_statistics(self) -> None:
        """Apply what the last optimizer step saw: move the running mean and the balancing bias, then
        clear the accumulators. Call once per optimizer step, after every process has reduced (summed)
        ``pending_input_sum`` and ``pending_load``, so that every rank routes identically."""
        # Every decision stays on the device (no host sync, so a GPU step never waits here): a step that routed no
        # sample (`seen` False) moves nothing.
        dtype = self._statistics_on(self.area_bias.device)
        count = self.pending_load.sum()
        seen = count > 0
        count = count.clamp(min=1.0)
        batch_mean = self.pending_input_sum / count
        # A cumulative average for the first steps, then an exponential one.
        momentum = (1.0 / (self.num_updates + 1).to(dtype)).clamp(min=self.center_momentum) * seen
        self.input_mean.lerp_(batch_mean.to(self.input_mean.dtype), momentum.to(self.input_mean.dtype))
        # An area that took less than its share 1/K is made cheaper to select, one that took more dearer;
        # a dead area (no samples) keeps gaining until it wins some. No gradient is involved.
        share = self.pending_load / count
        self.area_bias += (self.balance_rate * (1.0 - self.num_areas * share) * seen).to(self.area_bias.dtype)
        self.num_updates += seen.long()
        self.pending_input_sum.zero_()
        self.pending_load.zero_()
        self._statistics_applied()


class ClaimRouter(RouterBase, nn.Module):
    """Areas claimed when the stream shifts (``router="claim"``, an MLP option for continual learning): no task label
    or task boundary is given, and a task's areas are kept by the data they were claimed for.

    - Claim: before each training batch the trainer scores it with the current model routed as in training (a
      forward under ``probing``, see :meth:`observe`); a loss more than ``surprise`` nats above the mean of the last
      ``window`` batches' losses (or the first batch) claims the next ``areas_per_claim`` free areas, whose
      prototypes start from rows of that batch (farthest-point). After a claim ``window`` batches pass before the
      next; once every area is claimed, the last claim keeps training.
    - Training routes among the latest claim's areas only, each row to the area of its nearest prototype (Euclidean,
      on the router's input; ``prototypes_per_area`` of them an area). Each prototype is the running mean of the
      rows it took (online k-means), applied once per optimizer step by :meth:`update_statistics`.
    - Inference routes to the area of the nearest prototype among every claimed area.

    No parameter and no gradient: the areas of older claims are never selected in training, so they get no update (no
    gradient, or a zero one that the optimizer hook drops). Area health counts unclaimed areas as dead. Measured in
    docs/CONTINUAL.md (split Fashion-MNIST, split MNIST).

    Several processes (``torch.distributed``) claim alike: the model averages the probe loss over them before
    :meth:`observe`, a claim starts from every process's rows (``gathered_rows``), and the trainer sums the k-means
    sums (``pending``) over them before :meth:`update_statistics`.

    Buffers (persistent): ``prototypes`` (K P, d_in), ``counts`` (K P), ``claimed`` and ``active`` (the number of
    claimed areas, the first area of the latest claim), ``recent_losses`` (window) and ``num_losses`` (losses seen
    since the last claim), all fp32 or long.
    """

    learned = False  # no routing loss and no lr group
    pending = ("pending_sum", "pending_count")
    statistics = (*pending, "logged_load")

    def __init__(
        self,
        in_features: int,
        num_areas: int,
        *,
        areas_per_claim: int = 3,
        surprise: float = 3.0,
        window: int = 50,
        prototypes_per_area: int = 8,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.num_areas = num_areas
        self.areas_per_claim = areas_per_claim
        self.surprise = surprise
        self.window = window
        self.per_area = prototypes_per_area
        slots = num_areas * prototypes_per_area  # area k owns prototype rows k P .. k P + P - 1
        self.register_buffer("prototypes", torch.empty(slots, in_features, dtype=torch.float32))
        self.register_buffer("counts", torch.empty(slots, dtype=torch.float32))
        self.register_buffer("claimed", torch.empty((), dtype=torch.long))
        self.register_buffer("active", torch.empty((), dtype=torch.long))
        self.register_buffer("recent_losses", torch.empty(window, dtype=torch.float32))
        self.register_buffer("num_losses", torch.empty((), dtype=torch.long))
        # Not state: what the training forwards since the last optimizer step took per prototype, the per-area load
        # for the area health, and the input of the last probing forward (the rows a claim starts from).
        self.pending_sum = torch.zeros(slots, in_features, dtype=torch.float64, device="cpu")
        self.pending_count = torch.zeros(slots, dtype=torch.float64, device="cpu")
        self.logged_load = torch.zeros(num_areas, dtype=torch.float64, device="cpu")
        self.probing = False
        self.probe_input: torch.Tensor | None = None
        self.reset_parameters()

    def initial_values(self) -> dict[str, torch.Tensor]:
        """Fresh value of every buffer, by name (CPU tensors): nothing claimed."""
        return {name: torch.zeros_like(buffer, device="cpu") for name, buffer in self._buffers.items()}

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_areas={self.num_areas}, areas_per_claim={self.areas_per_claim}, "
            f"prototypes_per_area={self.per_area}, surprise={self.surprise}, window={self.window}"
        )

    def summary(self) -> str:
        """One line for `sal-hf info`."""
        first, end = self.active_areas()
        latest = f"latest claim: {first}..{end - 1}" if end > first else "none claimed yet"
        return (
            f"K={self.num_areas}, in={self.in_features}, claimed areas {int(self.claimed)} ({latest}), "
            f"{self.per_area} prototypes an area"
        )

    def slots(self, first_area: int, last_area: int) -> torch.Tensor:
        """The prototype rows of areas ``first_area .. last_area - 1``."""
        return torch.arange(first_area * self.per_area, last_area * self.per_area, device=self.prototypes.device)

    def active_areas(self) -> tuple[int, int]:
        """``(first, end)`` of the latest claim's areas."""
        first = int(self.active)
        return first, min(first + self.areas_per_claim, int(self.claimed))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        """Route a (B, d_in) batch: ``(area (B,) long, None)``. Nothing claimed yet (a first probe): area 0."""
        if mask is not None:
            raise ValueError("router='claim' routes MLP inputs, one row per sample; it takes no mask.")
        x = x.detach().float()
        training = is_training_forward(self)
        if self.probing:
            self.probe_input = x
        claimed = int(self.claimed)
        if claimed == 0:
            return torch.zeros(x.shape[0], dtype=torch.long, device=x.device), None
        candidates = self.slots(*self.active_areas()) if training or self.probing else self.slots(0, claimed)
        with torch.no_grad():
            # Distances relative to the first prototype (a point of the data): cdist's matrix-product form cancels
            # digits when the inputs sit far from the origin.
            origin = self.prototypes[0].float()
            slot = candidates[torch.cdist(x - origin, self.prototypes[candidates].float() - origin).argmin(1)]
            area = slot // self.per_area
            if training:
                dtype = self._statistics_on(x.device)
                self.pending_sum.index_add_(0, slot, x.to(dtype))
                self.pending_count += area_counts(slot, len(self.counts)).to(dtype)
                self.logged_load += area_counts(area, self.num_areas).to(dtype)
                self._count_training_forward()
        return area, None

    @torch.no_grad()
    def observe(self, loss: float) -> bool:
        """Take the loss of the batch about to train, from a forward under ``probing`` (which kept its input);
        claim areas on a surprise. Returns whether it claimed. A loss that is not finite is ignored (the trainer stops
        on it). The loss is a batch mean: with small batches (under about 16 rows) single batches cross the surprise
        by chance, so raise `surprise` or the batch size."""
        if not math.isfinite(loss):
            return False
        claimed, seen = int(self.claimed), int(self.num_losses)
        recent = self.recent_losses[: min(seen, self.window)]
        shift = claimed == 0 or (seen >= self.window and loss > float(recent.mean()) + self.surprise)
        if shift and claimed < self.num_areas:
            if self.probe_input is None:
                raise RuntimeError("ClaimRouter.observe needs a forward under `probing` first (its rows seed a claim).")
            x = gathered_rows(self.probe_input)
            end = min(claimed + self.areas_per_claim, self.num_areas)
            slots = self.slots(claimed, end)
            rows = [0]
            for _ in range(min(len(slots), len(x)) - 1):  # farthest-point: each next row farthest from those taken
                rows.append(int(torch.cdist(x, x[rows]).min(1).values.argmax()))
            if len(rows) < len(slots):
                # A batch smaller than the claim's prototypes: area a of the claim takes every A-th row of the
                # farthest-point order (A areas), repeated to fill its prototypes, so that the areas start from rows
                # of their own (were the rows repeated in order, every area would hold them all and the first would
                # win every tie). Repeats within an area take no rows. (Fewer rows than areas: shared, in turn.)
                areas = len(slots) // self.per_area
                own = [rows[a::areas] or [rows[a % len(rows)]] for a in range(areas)]
                rows = [own[a][j % len(own[a])] for a in range(areas) for j in range(self.per_area)]
            self.prototypes[slots] = x[rows]
            self.counts[slots] = 1.0
            self.active.fill_(claimed)
            self.claimed.fill_(end)
            self.num_losses.zero_()
            return True
        self.recent_losses[seen % self.window] = loss
        self.num_losses += 1
        return False

    @torch.no_grad()
    def update_statistics(self) -> None:
        """Move each prototype to the running mean of the rows it took since the last optimizer step."""
        dtype = self._statistics_on(self.prototypes.device)
        taken = self.pending_count
        self.counts += taken.float()
        step = (self.pending_sum - taken[:, None] * self.prototypes.to(dtype)) / (
            self.counts.to(dtype).clamp(min=1.0)[:, None]
        )
        self.prototypes += step.float()
        self.pending_sum.zero_()
        self.pending_count.zero_()
        self._statistics_applied()
