"""SALConfig: every hyperparameter of a SAL model and of its learning rule, validated early."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from typing import Any

from transformers import PreTrainedConfig
from transformers.utils import logging

from .activations import ACTIVATIONS
from .areas import AREA_IMPLEMENTATIONS, AREA_MODES, NORMS
from .feedback import FEEDBACK_ALIGNMENTS, FEEDBACK_MODES, FEEDBACK_SCOPES


logger = logging.get_logger(__name__)

LEARNING_RULES = ("sal", "dfa", "fa", "bp")


# Fields whose default changed after checkpoints were saved without them, and the value those checkpoints were
# trained with: `feedback_alignment` (fixed feedback was the only kind) and `router_lr_scale` (the routers learned at
# the full lr).
BEFORE_THE_FIELD = {"feedback_alignment": "fixed", "router_lr_scale": 1.0}


def with_saved_defaults(config_dict: dict, kwargs: dict, before: dict = BEFORE_THE_FIELD) -> dict:
    """A saved config (one that `save_pretrained` or `to_dict` wrote: it names its `transformers_version`) without one
    of `before`'s keys was written before that field existed: it loads with the value it was trained with
    (`before[key]`), so it keeps training, and resumes, the way it was trained, although the default changed since.
    Configs saved since store every key (`null` where unset and derived). For `SALConfig` and `SALTransformerConfig`."""
    if "transformers_version" not in config_dict:  # not written by save_pretrained / to_dict: a dict of the user's
        return config_dict
    missing = {key: value for key, value in before.items() if key not in config_dict and key not in kwargs}
    return {**config_dict, **missing}


AREA_INITS = ("independent", "identical")
ROUTING_SCOPES = ("layer", "shared")
ROUTERS = ("learned", "random")
MLP_ROUTERS = (*ROUTERS, "claim")  # the transformer's routers route tokens; `claim` routes samples of a task stream
CLAIM_DEFAULTS = {"claim_areas": 3, "claim_surprise": 3.0, "claim_window": 50, "claim_prototypes": 8}
AREA_NORMS = ("batch", "area")
ACTIVATION_NAMES = tuple(ACTIVATIONS)
# The feedback each rule implies; `sal` may use either.
RULE_FEEDBACK = {"dfa": "direct", "fa": "layerwise", "sal": "direct", "bp": None}


def changed_fields(config) -> Callable[[str], bool]:
    """``changed(name)``: whether a dataclass config's field differs from its class default."""
    defaults = {field.name: field.default for field in dataclasses.fields(type(config)) if field.init}
    return lambda name: getattr(config, name) != defaults.get(name)


def ignored_in_both(config) -> list[str]:
    """The `ignored_settings` lines `SALConfig` and `SALTransformerConfig` share: a router lr for a router that never
    trains, a decay for feedback that does not learn."""
    changed, lines = changed_fields(config), []
    if config.router == "random" and changed("router_lr_scale"):
        lines.append(f"router_lr_scale={config.router_lr_scale!r} has no effect: router='random' never trains.")
    if config.effective_feedback_alignment != "kolen_pollack" and changed("feedback_decay"):
        lines.append(
            f"feedback_decay={config.feedback_decay!r} has no effect: only learned (Kolen-Pollack) feedback decays; "
            f"this config's feedback is {config.effective_feedback_alignment!r}."
        )
    return lines


def check_number(owner: str, field: str, value: Any, *, strict: bool = False, optional: bool = False) -> None:
    """Raise a ValueError naming the field unless ``value`` is a finite real number (not a bool), > 0 when ``strict``
    else >= 0; None passes when ``optional`` (the field derives its value). NaN and inf never pass: a NaN balance rate
    would route every sample to area 0 with a finite loss."""
    if optional and value is None:
        return
    real = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not (real and (value > 0 if strict else value >= 0)):
        bound = "> 0" if strict else ">= 0"
        raise ValueError(
            f"{owner}.{field} must be a finite number {bound}{' or None (derive)' if optional else ''}; "
            f"got {field}={value!r}."
        )


class SALConfig(PreTrainedConfig):
    r"""Configuration of a SAL (Selective Adaptive Learning) network: an MLP whose hidden layers are split
    into K mutually exclusive *areas*, one of which each sample activates, trained without backpropagation.

    Args:
        input_size (`int`, defaults to 784):
            Number of input values per sample; inputs of any shape are flattened to this size.
        image_size (`list[int]`, *optional*):
            `[height, width]` of the images the model reads (`num_channels * height * width` must equal
            `input_size`; an int means a square). Only [`SALImageProcessor`] uses it, to resize images.
        num_channels (`int`, defaults to 1):
            Channels per image: 1 turns colour images into luminance (the paper's grayscale inputs), 3 keeps RGB
            (`input_size = 3 * height * width`). Only [`SALImageProcessor`] uses it.
        hidden_sizes (`list[int]`, defaults to `[256]`):
            Units of each hidden layer. `[256]` is the paper's "2-layer MLP" (input-256-labels).
        hidden_act (`str`, defaults to `"relu"`):
            Hidden activation, one of `relu`, `tanh`, `gelu`, `silu`, `sigmoid`.
        num_areas (`int`, defaults to 16):
            K, the number of areas per layer. `1` gives an ordinary dense network.
        area_mode (`str`, defaults to `"expert"`):
            `expert`: area k owns a full weight matrix `W[k]` (parameters grow with K, compute per sample does
            not). `partition`: the units of one layer are split into K blocks and a sample activates one block
            (each hidden size must be divisible by K).
        area_init (`str`, defaults to `"identical"`):
            `identical`: all areas start as copies of one Kaiming draw; `independent`: every area gets its own.
            `identical` measured better (docs/ABLATIONS.md).
        routing_scope (`str`, defaults to `"layer"`):
            `layer`: each layer routes its own input; `shared`: the input is routed once and every layer uses
            that area.
        router (`str`, defaults to `"learned"`):
            `learned`: the routing projection learns by its local rule; `random`: it stays at its random draw.
            `claim` (for continual learning, with `routing_scope="shared"`; through [`SALTrainer`]): areas are
            claimed when a training batch's loss jumps (`claim_*`), training routes among the latest claim's areas
            and inference to the nearest prototype among all claimed ones (`routing.ClaimRouter`; docs/CONTINUAL.md).
            Pair it with `dual_path=False, area_lr_scale=1.0`: the shared path (and a norm) learn from every task.
        claim_areas (`int`, defaults to 3):
            With `router="claim"`: areas a claim takes (a sequence of T tasks needs `num_areas >= T * claim_areas`).
        claim_surprise (`float`, defaults to 3.0):
            With `router="claim"`: a batch whose loss, routed as in training, is this many nats above the mean of the
            last `claim_window` batches claims new areas. The loss is a batch mean: with batches under about 16 rows
            (micro-batches, under gradient accumulation) single batches cross 3 nats by chance; raise it.
        claim_window (`int`, defaults to 50):
            With `router="claim"`: batches in that mean, and batches after a claim before the next.
        claim_prototypes (`int`, defaults to 8):
            With `router="claim"`: prototypes an area routes by (online k-means on the router's input). More route
            test inputs better (32 misrouted 20.0% of split Fashion-MNIST's test images against 22.6% with 8, and
            were 2.1 points more accurate; docs/CONTINUAL.md) at `num_areas * claim_prototypes * input size` floats.
        routing_dim (`int`, defaults to 32):
            Size of the routing space of the projection and the frozen prototypes.
        routing_balance_rate (`float`, defaults to 1e-3):
            Step, per optimizer step, of the per-area selection bias that steers load towards 1/K (revives dead
            areas without gradients). `0` disables balancing.
        routing_center_momentum (`float`, defaults to 0.01):
            Momentum of the running mean subtracted from the router's input.
        routing_loss_weight (`float`, defaults to 1.0):
            Weight of the routers' local objective in the update (`0` freezes the learned projection). The
            objective is the projection's only loss, so under Adam-style optimizers its weight barely changes the
            step; `router_lr_scale` sets the router's pace under any optimizer.
        router_lr_scale (`float`, defaults to 0.01):
            Learning-rate multiplier of the learned routing projections, applied by [`SALTrainer`] through an
            optimizer parameter group (like `area_lr_scale`). At the full lr (1.0, the default until 2026-11-29)
            AdamW rewrote the projection within tens of steps: on Fashion-MNIST 79-96% of the training images
            changed area in every epoch, a quarter of the areas died, and SAL-16 scored what a dense layer with the
            same feedback scores. At 0.01 no area died, a fifth to a third of the images still changed area in the
            fifth epoch (5% with `norm="layernorm"`), and SAL-16 gained 1.1 points over the full lr at width 16
            (docs/ROUTING.md).
        output_areas (`bool`, defaults to `False`):
            Give the output layer K areas too (routed on its input).
        dual_path (`bool`, *optional*):
            Add a shared dense path beside the area path in every hidden layer; the two are summed. Unset (None):
            derived on read (`effective_dual_path`): True when `num_areas > 1` in expert mode (measured better,
            docs/ABLATIONS.md), else False. Partition mode refuses it: there a sample activates one block of units.
            Each path starts from its own Kaiming draw, so a layer's pre-activation starts with twice Kaiming's
            variance: in a deep stack without `residual` the activations grow by about sqrt(2) a layer at
            initialisation (the measured defaults keep this init; deep stacks should use `residual=True` and a norm).
        residual (`bool`, defaults to `False`):
            Make every hidden layer after the first a residual block, ``h_l = h_{l-1} + f(a_l)``. Needs equal
            hidden sizes (the first layer maps the input to that width and is never residual). The block's
            local update keeps its form: ``dh_l / da_l = s f'(a_l)``, so ``delta_l = s g_l * f'(a_l)``.
        residual_scale (`float`, *optional*):
            ``s`` in ``h_l = h_{l-1} + s f(a_l)``. Unset (None): derived on read (`effective_residual_scale`) as
            ``1 / (number of residual blocks)`` when `residual` is set: with direct feedback every block receives an aligned signal, so the change of the residual
            stream per step is the sum of all blocks' changes and grows with depth unless each branch is scaled
            by 1/blocks (docs/DEPTH.md measures 1/sqrt(blocks) too).
        norm (`str`, defaults to `"none"`):
            `none`, `layernorm` or `rmsnorm`: normalise every layer's input (pre-norm, output layer included)
            before its router and areas. The norm's parameters belong to that layer and learn from its own
            local update. Deep residual stacks (tens of layers) need it.
        learning_rule (`str`, defaults to `"sal"`):
            `sal` (area-local feedback alignment), `dfa`, `fa` or `bp` (ordinary backpropagation). All train the
            same architecture, so every comparison is this one flag: `dfa` keeps `num_areas` (16 routed areas by
            default); plain DFA, the benchmarks' baseline, is `learning_rule="dfa", num_areas=1`.
        feedback (`str`, *optional*):
            `direct` (DFA-style), `layerwise` (FA-style) or `stream` (residual-stream feedback, for `residual=True`
            stacks: one matrix `B` (num_labels, width) and every hidden layer receives the same signal, the output
            error projected to the last hidden state `h_L` and taken back through the parameter-free part of the
            output layer's norm at `h_L`: an estimate of the gradient at the end of the residual stream, which
            reaches every block along the skip path; no forward weight is read; docs/FEEDBACK.md,
            docs/DEPTH_FEEDBACK.md). When unset, `learning_rule` decides (see `feedback_mode`): `sal` and `dfa` use
            `direct`, `fa` uses `layerwise`; only `sal` may choose.
        feedback_alignment (`str`, *optional*):
            How the feedback matrices are refined (docs/FEEDBACK.md). `fixed`: frozen random matrices (feedback
            alignment as published; local signals only). `kolen_pollack`: learnable matrices that receive the
            outer product of the signal they carry and the activity they carry it to, plus `feedback_decay`
            (Kolen-Pollack, Akrout et al. 2019, with `layerwise` feedback; direct Kolen-Pollack, Webster et al. 2020,
            with `direct`); local signals only, no weight transport. `sign`: fixed random magnitudes with the
            signs of the forward matrix that reads the layer's output (sign-concordant feedback, Liao et al. 2016,
            BioTorch's frSF); it TRANSPORTS THE SIGNS of the forward weights, and needs `layerwise` feedback.
            When unset (see `effective_feedback_alignment`): `kolen_pollack` for `sal` with direct or stream
            feedback ("SAL as we recommend", measured better in docs/RESULTS.md), `fixed` otherwise (`dfa` and `fa`
            name the published algorithms; "SAL as published" is `feedback_alignment="fixed"`).
        feedback_decay (`float`, defaults to 1e-3):
            `lambda` of the Kolen-Pollack update of the feedback matrices, `grad B = s^T h + lambda B` (only with
            `feedback_alignment="kolen_pollack"`). It decays `B` alone, towards 0, not towards the forward weights;
            under AdamW, once the error is small, the term dominates `B`'s normalised step, so over a long run `B`
            shrinks and turns away from the layer it stands in for. Measured both ways (docs/RESULTS.md): 0 scores
            0.74 higher on full Fashion-MNIST at 25 epochs, 1e-3 0.9-1.6 higher on Digits, MNIST-1D and MNIST; the
            default stays 1e-3. Kolen-Pollack as published decays both matrices: `weight_decay` in `TrainingArguments`.
        feedback_gain (`float`, defaults to 1.0):
            Multiplies the feedback matrices' random draw (Kaiming-uniform with the output layer's fan-in, std
            `sqrt(2 / width)`; `sqrt(width / 2)`, 11.3 at width 256, gives unit-variance entries, the draw of much
            DFA code). A constant, no weight transport. Under plain SGD with fixed feedback it multiplies every
            hidden layer's step by `g` with direct or stream feedback, and layer l's by `g ** (L - l)` with
            layer-wise feedback (the signal passes through every matrix above it), as a learning rate of the hidden
            layers would; Adam-style optimizers divide a gradient's scale out, so there its effect is small (through
            gradient clipping, and with Kolen-Pollack the matrices' own pace). It sets a fresh draw only: learned
            matrices loaded from a checkpoint keep their trained values (with a warning if the gain differs).
            docs/FEEDBACK.md. Not with `learning_rule="bp"`.
        feedback_scope (`str`, defaults to `"shared"`):
            `shared`: one feedback matrix per hidden layer, used by all its areas. `area`: every area of a layer has
            its own direct feedback matrix `B_l[k]` (K, C, d_l), and a sample's signal uses the matrix of the area
            it selected at that layer (Kolen-Pollack then learns `B_l[k]` from area k's samples alone). Local
            signals only, no weight transport. Only for `learning_rule="sal"` with direct feedback and
            `num_areas > 1`.
        area_update_norm (`str`, defaults to `"batch"`):
            `batch`: an area's update is averaged over the whole batch (the gradient of a mean loss). `area`:
            over the samples routed to it. Only for `sal`.
        area_lr_scale (`float`, *optional*):
            Learning-rate multiplier of the area parameters (the selective path, K > 1), applied by [`SALTrainer`]
            through an optimizer parameter group. Adam-style optimizers give every area a step of about lr however
            few samples it saw; unset (None), it is derived on read (`effective_area_lr_scale`) as `1 / num_areas`,
            which slows the areas to the pace of a dense layer.
        routing_seed (`int`, defaults to 0):
            Seed of the frozen prototypes and initial routing projections (layer l uses `routing_seed + 2 l`).
        feedback_seed (`int`, defaults to 1000):
            Seed of the fixed feedback matrices (layer l uses `feedback_seed + l`).
        area_implementation (`str`, defaults to `"auto"`):
            How the area layers run (the results are the same up to float summation order; like transformers'
            `attn_implementation`, it is not saved with the checkpoint). `split`: samples grouped by area, one
            matmul per non-empty area (reads the per-area counts back to the host once per layer). `masked`:
            every area for every sample in one matmul, then each sample keeps its own area's output: no host
            sync and a fixed handful of kernels, but K times the FLOPs (expert mode) and every area gets a
            gradient, zero where unselected, which [`SALTrainer`] drops before the optimizer step (see
            `clear_unselected_area_grads`). `auto`: `masked` for inputs on a CUDA device when
            `num_areas <= 64`, else `split`.

    Example:

    ```python
    >>> from sal_hf import SALConfig
    >>> config = SALConfig(input_size=64, hidden_sizes=[256], num_labels=10, num_areas=16)
    ```
    """

    model_type = "sal"
    # Trainer's evaluation gathers logits only; the routing records are for the learning rule and diagnostics.
    keys_to_ignore_at_inference = ["areas", "pre_activations", "routing_losses"]

    input_size: int = 784
    image_size: list[int] | None = None
    num_channels: int = 1
    hidden_sizes: list[int] | None = None
    hidden_act: str = "relu"
    num_areas: int = 16
    area_mode: str = "expert"
    area_init: str = "identical"
    routing_scope: str = "layer"
    router: str = "learned"
    routing_dim: int = 32
    routing_balance_rate: float = 1e-3
    routing_center_momentum: float = 0.01
    routing_loss_weight: float = 1.0
    router_lr_scale: float = 0.01
    claim_areas: int = CLAIM_DEFAULTS["claim_areas"]
    claim_surprise: float = CLAIM_DEFAULTS["claim_surprise"]
    claim_window: int = CLAIM_DEFAULTS["claim_window"]
    claim_prototypes: int = CLAIM_DEFAULTS["claim_prototypes"]
    output_areas: bool = False
    dual_path: bool | None = None
    residual: bool = False
    residual_scale: float | None = None
    norm: str = "none"
    learning_rule: str = "sal"
    feedback: str | None = None
    feedback_alignment: str | None = None
    feedback_decay: float = 1e-3
    feedback_gain: float = 1.0
    feedback_scope: str = "shared"
    area_update_norm: str = "batch"
    area_lr_scale: float | None = None
    routing_seed: int = 0
    feedback_seed: int = 1000
    area_implementation: str = "auto"

    def __post_init__(self, **kwargs):
        if self.hidden_sizes is None:
            self.hidden_sizes = [256]
        elif isinstance(self.hidden_sizes, (list, tuple)):
            self.hidden_sizes = list(self.hidden_sizes)
        if isinstance(self.image_size, int) and not isinstance(self.image_size, bool):
            self.image_size = [self.image_size, self.image_size]
        elif self.image_size is not None:
            self.image_size = list(self.image_size)
        # `dual_path`, `area_lr_scale` and `residual_scale` stay as the user gave them (None = derive): their
        # defaults depend on other fields and are derived on read (`effective_*`), so a saved config reloaded with
        # `from_pretrained(dir, num_areas=...)` behaves exactly like a fresh one.
        super().__post_init__(**kwargs)
        self.validate_sal()
        for message in self.ignored_settings():
            logger.warning(message)

    def ignored_settings(self) -> list[str]:
        """A line for each field set away from its default where the rest of the config gives it no effect (valid,
        so a warning, not an error; `__post_init__` logs them): the user asked for something that will not happen."""
        changed = changed_fields(self)
        lines = ignored_in_both(self)
        if self.learning_rule == "bp" and changed("routing_loss_weight"):
            lines.append(
                f"routing_loss_weight={self.routing_loss_weight!r} has no effect: learning_rule='bp' does not train the "
                "routers (only the local rules add their objective)."
            )
        if self.residual and len(self.hidden_sizes) == 1:
            lines.append("residual=True has no effect with one hidden layer (the first layer is never residual).")
        if self.residual_scale is not None and not self.residual:
            lines.append(f"residual_scale={self.residual_scale!r} has no effect: residual=False (no residual blocks).")
        if self.router == "random" and changed("routing_loss_weight"):
            lines.append(
                f"routing_loss_weight={self.routing_loss_weight!r} has no effect: router='random' never trains."
            )
        if self.router == "claim":
            learned_only = ("routing_dim", "routing_balance_rate", "routing_center_momentum", "router_lr_scale")
            for name in [n for n in (*learned_only, "routing_loss_weight") if changed(n)]:
                lines.append(
                    f"{name}={getattr(self, name)!r} has no effect: router='claim' routes by its claims' prototypes in "
                    "input space (claim_* fields), with no learned projection."
                )
        if self.num_areas == 1:  # (area_lr_scale=1.0 is what K = 1 does anyway: the benchmark's baselines pin it)
            for name in [n for n in ("area_update_norm", "area_lr_scale") if changed(n) and getattr(self, n) != 1.0]:
                lines.append(f"{name}={getattr(self, name)!r} has no effect: num_areas=1 has no areas.")
        return lines

    def validate_sal(self) -> None:
        """Raise a `ValueError` naming the field, its value and the fix for every invalid setting."""
        for name in ("input_size", "num_areas", "routing_dim", "routing_seed", "feedback_seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"SALConfig.{name} must be an int; got {name}={value!r}.")
        for name in ("input_size", "num_areas", "routing_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"SALConfig.{name} must be >= 1; got {name}={getattr(self, name)!r}.")
        sizes = self.hidden_sizes
        if (
            not isinstance(sizes, list)
            or not sizes
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in sizes)
        ):
            raise ValueError(
                f"SALConfig.hidden_sizes must be a non-empty list of positive ints, one a hidden layer; got "
                f"hidden_sizes={sizes!r}"
                + (f" (one hidden layer: hidden_sizes=[{sizes}])." if isinstance(sizes, int) else ".")
            )
        if self.num_channels not in (1, 3) or isinstance(self.num_channels, bool):
            raise ValueError(
                f"SALConfig.num_channels must be 1 (luminance) or 3 (RGB); got num_channels={self.num_channels!r}."
            )
        size = self.image_size
        if size is None and self.input_size % self.num_channels:
            raise ValueError(
                f"SALConfig.input_size={self.input_size} does not split into num_channels={self.num_channels} "
                "channels; set input_size=num_channels*height*width (image_size=[height, width] checks it)."
            )
        if size is not None:
            if len(size) != 2 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in size):
                raise ValueError(
                    f"SALConfig.image_size must be [height, width] of positive ints; got image_size={size!r}."
                )
            values = self.num_channels * size[0] * size[1]
            if values != self.input_size:
                raise ValueError(
                    f"SALConfig.image_size={size} with num_channels={self.num_channels} holds {values} values but "
                    f"input_size={self.input_size}. Set input_size=num_channels*height*width or fix image_size."
                )
        choices = {
            "hidden_act": ACTIVATION_NAMES,
            "area_mode": AREA_MODES,
            "area_init": AREA_INITS,
            "routing_scope": ROUTING_SCOPES,
            "router": MLP_ROUTERS,
            "learning_rule": LEARNING_RULES,
            "area_update_norm": AREA_NORMS,
            "norm": NORMS,
            "area_implementation": AREA_IMPLEMENTATIONS,
            "feedback_scope": FEEDBACK_SCOPES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"SALConfig.{name} must be one of {allowed}; got {name}={getattr(self, name)!r}.")
        for name in ("routing_balance_rate", "routing_loss_weight", "feedback_decay"):
            check_number("SALConfig", name, getattr(self, name))
        check_number("SALConfig", "router_lr_scale", self.router_lr_scale, strict=True)  # router='random': frozen
        for name in ("area_lr_scale", "residual_scale"):
            check_number("SALConfig", name, getattr(self, name), strict=True, optional=True)
        if self.dual_path is not None and not isinstance(self.dual_path, bool):
            raise ValueError(f"SALConfig.dual_path must be a bool or None (derive); got dual_path={self.dual_path!r}.")
        self._validate_claims()
        if isinstance(self.routing_center_momentum, bool) or not 0.0 < self.routing_center_momentum <= 1.0:
            raise ValueError(
                f"SALConfig.routing_center_momentum must be in (0, 1]; got routing_center_momentum={self.routing_center_momentum!r}."
            )
        if self.num_labels is None or self.num_labels < 2:
            raise ValueError(
                f"SALConfig.num_labels must be >= 2 for classification; got num_labels={self.num_labels!r}."
            )
        if self.problem_type not in (None, "single_label_classification"):
            raise ValueError(
                f"SAL's error signal is softmax cross-entropy; got problem_type={self.problem_type!r}. "
                "Use problem_type=None or 'single_label_classification'."
            )

        expected = RULE_FEEDBACK[self.learning_rule]
        if self.feedback is not None and self.feedback not in FEEDBACK_MODES:
            raise ValueError(f"SALConfig.feedback must be one of {FEEDBACK_MODES}; got feedback={self.feedback!r}.")
        if self.learning_rule != "sal" and self.feedback not in (None, expected):
            raise ValueError(
                f"learning_rule={self.learning_rule!r} implies feedback={expected!r}; got feedback={self.feedback!r}. "
                "Leave feedback unset, or use learning_rule='sal' to choose the feedback."
            )
        if self.feedback_alignment is not None and self.feedback_alignment not in FEEDBACK_ALIGNMENTS:
            raise ValueError(
                f"SALConfig.feedback_alignment must be one of {FEEDBACK_ALIGNMENTS} (or unset); got "
                f"feedback_alignment={self.feedback_alignment!r}."
            )
        if self.learning_rule == "bp" and self.feedback_alignment not in (None, "fixed"):
            raise ValueError(
                f"feedback_alignment={self.feedback_alignment!r} refines the feedback of a local rule; "
                "learning_rule='bp' has no feedback matrices. Use learning_rule='sal', 'dfa' or 'fa', or "
                "feedback_alignment='fixed'."
            )
        if self.effective_feedback_alignment == "sign" and self.feedback_mode != "layerwise":
            raise ValueError(
                f"feedback_alignment='sign' copies the signs of the forward matrix that reads each layer's output, "
                f"which only layer-wise feedback has; got feedback={self.feedback!r} with "
                f"learning_rule={self.learning_rule!r} (feedback_mode={self.feedback_mode!r}). Set "
                "feedback='layerwise' (learning_rule='sal') or learning_rule='fa'."
            )
        gain = self.feedback_gain
        if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not 0 < gain < math.inf:
            raise ValueError(
                f"SALConfig.feedback_gain must be a finite number > 0; got feedback_gain={gain!r} (1.0 keeps the "
                "feedback matrices at the forward init's scale)."
            )
        if gain != 1.0 and self.learning_rule == "bp":
            raise ValueError(
                f"feedback_gain={gain!r} scales the feedback matrices of the local rules, and learning_rule='bp' has "
                "none; drop feedback_gain or choose learning_rule 'sal', 'dfa' or 'fa'."
            )
        if self.feedback_scope == "area" and (
            self.learning_rule != "sal" or self.feedback_mode != "direct" or self.num_areas < 2
        ):
            raise ValueError(
                "feedback_scope='area' gives each area its own direct feedback matrix; it needs learning_rule='sal', "
                f"direct feedback and num_areas >= 2; got learning_rule={self.learning_rule!r}, "
                f"feedback_mode={self.feedback_mode!r}, num_areas={self.num_areas}. Use feedback_scope='shared'."
            )
        if self.feedback_mode == "stream" and (len(set(sizes)) != 1 or (len(sizes) > 1 and not self.residual)):
            raise ValueError(
                "feedback='stream' sends the signal at the last hidden state to every hidden layer, through the skip "
                f"path of a residual stack; it needs equal hidden sizes and residual=True (or one hidden layer); got "
                f"hidden_sizes={sizes}, residual={self.residual}. Set residual=True with equal sizes, or "
                "feedback='direct'."
            )
        if self.area_update_norm != "batch" and self.learning_rule != "sal":
            raise ValueError(
                f"area_update_norm={self.area_update_norm!r} is a SAL refinement; with "
                f"learning_rule={self.learning_rule!r} use area_update_norm='batch'."
            )
        if self.area_mode == "partition":
            bad = [d for d in sizes if d % self.num_areas]
            if bad:
                raise ValueError(
                    f"area_mode='partition' splits each hidden layer into num_areas={self.num_areas} blocks, but "
                    f"hidden_sizes={sizes} has sizes {bad} not divisible by it. Change hidden_sizes or num_areas."
                )
            if self.output_areas:
                raise ValueError("area_mode='partition' cannot split the output layer; set output_areas=False.")
            if self.hidden_act != "relu" and self.learning_rule != "bp":
                # A sample's other blocks hold a = 0: only ReLU gives them f(0) = 0 (silent) and f'(0) = 0 (no error).
                raise ValueError(
                    f"area_mode='partition' with hidden_act={self.hidden_act!r}: the units of a sample's inactive blocks "
                    f"have pre-activation 0, and {self.hidden_act}'s f(0) or f'(0) is not 0, so they would output a "
                    "constant and pass a local error down that backprop would not. Use hidden_act='relu' with "
                    "partition under a local rule, or area_mode='expert'."
                )
        for name in ("residual", "output_areas"):  # a string "false" would read as True
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"SALConfig.{name} must be a bool; got {name}={getattr(self, name)!r}.")
        if self.residual and len(set(sizes)) != 1:
            raise ValueError(
                f"residual=True adds each hidden layer's input to its output, so all hidden sizes must be equal; "
                f"got hidden_sizes={sizes}. Use equal sizes (e.g. [{sizes[0]}] * {len(sizes)}) or residual=False."
            )
        if self.num_areas == 1:
            for name in ("dual_path", "output_areas"):
                if getattr(self, name):
                    raise ValueError(f"{name}=True needs areas; got num_areas=1. Set num_areas > 1 or {name}=False.")
        if self.area_mode == "partition" and self.dual_path:
            raise ValueError(
                "area_mode='partition' means a sample activates one block of each hidden layer's units; dual_path=True "
                "would add a dense path that activates every unit. Set dual_path=False (or leave it unset: partition "
                "mode derives False), or use area_mode='expert'."
            )

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> tuple[dict, dict]:
        """[`PreTrainedConfig.get_config_dict`], refusing a checkpoint of another model type: transformers would
        only warn and build a SAL model from a foreign config."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            source = str(pretrained_model_name_or_path)
            if os.path.isdir(source):
                source = os.path.join(source, "config.json")
            raise ValueError(
                f"{source} has model_type={model_type!r}, not 'sal': it is not a SAL checkpoint. Load it with "
                "AutoModel / the class of that model type, or point to a directory saved by a SAL model."
            )
        return config_dict, kwargs

    def to_dict(self) -> dict[str, Any]:
        """[`PreTrainedConfig.to_dict`] without `area_implementation`: how this machine runs the areas, not part
        of the model, so it stays out of `config.json` and a checkpoint loads with `"auto"` wherever it goes."""
        output = super().to_dict()
        output.pop("area_implementation", None)
        return output

    def _validate_claims(self) -> None:
        """`router="claim"` and its `claim_*` fields: valid values, and no `claim_*` set for another router."""
        given = {name: getattr(self, name) for name in CLAIM_DEFAULTS}
        if self.router != "claim":
            changed = {name: value for name, value in given.items() if value != CLAIM_DEFAULTS[name]}
            if changed:
                raise ValueError(
                    f"{', '.join(f'{k}={v!r}' for k, v in changed.items())} only applies to router='claim'; got "
                    f"router={self.router!r}. Set router='claim' or drop them."
                )
            return
        for name in ("claim_areas", "claim_window", "claim_prototypes"):
            value = given[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SALConfig.{name} must be an int >= 1; got {name}={value!r}.")
        surprise = self.claim_surprise
        if isinstance(surprise, bool) or not isinstance(surprise, (int, float)) or not 0 < surprise < math.inf:
            raise ValueError(f"SALConfig.claim_surprise must be a finite number > 0 (nats); got {surprise!r}.")
        if self.claim_areas > self.num_areas:
            raise ValueError(
                f"router='claim' with claim_areas={self.claim_areas} needs num_areas >= claim_areas; got "
                f"num_areas={self.num_areas}."
            )
        if self.routing_scope != "shared":
            raise ValueError(
                "router='claim' routes each sample once, on the network's input, and every layer uses that area; "
                f"set routing_scope='shared' (got {self.routing_scope!r})."
            )

    @property
    def feedback_mode(self) -> str | None:
        """The feedback in use: `feedback` when set, else the one `learning_rule` implies (None for `bp`). Derived
        on read, not stored, so a checkpoint loaded with another `learning_rule` gets that rule's feedback."""
        return self.feedback if self.feedback is not None else RULE_FEEDBACK[self.learning_rule]

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """[`PretrainedConfig.from_dict`] of a config saved before `feedback_alignment` or `router_lr_scale` existed:
        see :func:`with_saved_defaults`."""
        return super().from_dict(with_saved_defaults(config_dict, kwargs), **kwargs)

    @property
    def effective_feedback_alignment(self) -> str:
        """`feedback_alignment`, or when unset: `kolen_pollack` for `learning_rule="sal"` with direct or stream
        feedback (the learned feedback measured better than fixed, docs/RESULTS.md, docs/DEPTH_FEEDBACK.md), else
        `fixed` (`dfa` and `fa` stay the published algorithms; layer-wise Kolen-Pollack trained deep residual stacks
        worse, docs/DEPTH_FEEDBACK.md)."""
        if self.feedback_alignment is not None:
            return self.feedback_alignment
        learned = self.learning_rule == "sal" and self.feedback_mode in ("direct", "stream")
        return "kolen_pollack" if learned else "fixed"

    @property
    def effective_dual_path(self) -> bool:
        """`dual_path`, or when unset: True in expert mode with areas (measured better, docs/ABLATIONS.md), False with
        one area or in partition mode (where a sample activates one block of units, nothing dense beside it)."""
        if self.dual_path is not None:
            return self.dual_path
        return self.num_areas > 1 and self.area_mode == "expert"

    @property
    def effective_area_lr_scale(self) -> float:
        """`area_lr_scale`, or when unset `1 / num_areas` (Adam-style optimizers give every area a step of about lr
        whatever its sample count; this slows the areas to the pace of a dense layer)."""
        return float(self.area_lr_scale) if self.area_lr_scale is not None else 1.0 / self.num_areas

    @property
    def effective_residual_scale(self) -> float:
        """`residual_scale`, or when unset `1 / (number of residual blocks)` with `residual=True` (else 1)."""
        if self.residual_scale is not None:
            return float(self.residual_scale)
        return 1.0 / max(1, len(self.hidden_sizes) - 1) if self.residual else 1.0

    @property
    def num_hidden_layers(self) -> int:
        return len(self.hidden_sizes)


__all__ = ["SALConfig"]
