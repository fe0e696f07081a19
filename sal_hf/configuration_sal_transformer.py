"""SALTransformerConfig: a decoder-only transformer whose MLPs are SAL area layers, trained block-locally."""

from __future__ import annotations

import os
from typing import Any

from transformers import PreTrainedConfig
from transformers.utils import logging

from .activations import ACTIVATIONS
from .areas import AREA_IMPLEMENTATIONS
from .block_rule import BLOCK_FEEDBACK_ALIGNMENTS, ERROR_SOURCES
from .configuration_sal import AREA_INITS, ROUTERS, SALConfig, check_number, ignored_in_both, with_saved_defaults


logger = logging.get_logger(__name__)


TRANSFORMER_RULES = ("sal", "dfa", "bp")
# Llama-style fields a ported config may carry: taken where they say what this model does, else refused
# (`SALTransformerConfig._check_llama_fields`).
LLAMA_FIELDS = (
    "rope_parameters",
    "head_dim",
    "num_key_value_heads",
    "attention_bias",
    "mlp_bias",
    "rope_scaling",
    "sliding_window",
)
FEEDBACK_POINTS = ("block", "micro")


class SALTransformerConfig(PreTrainedConfig):
    r"""Configuration of a SAL transformer: a pre-norm decoder (causal self-attention, then a SAL MLP, each with
    a residual connection) whose MLP up-projection is split into K areas, one routed per token, trained
    block-locally by direct feedback alignment (or by backpropagation, one flag apart).

    Values derived from other fields (`intermediate_size`, `dual_path`, `area_lr_scale`) are stored as given
    (None = derive) and derived where they are read (`effective_intermediate_size`, `effective_dual_path`,
    `effective_area_lr_scale`), so `from_pretrained(dir, num_areas=4)` derives them from the new K exactly as a
    fresh config would.

    Args:
        vocab_size (`int`, defaults to 8192): tokens in the vocabulary.
        hidden_size (`int`, defaults to 256): width d of the residual stream.
        num_hidden_layers (`int`, defaults to 4): decoder blocks.
        num_attention_heads (`int`, defaults to 4): attention heads (must divide `hidden_size` into an even head size).
        intermediate_size (`int`, *optional*): width of the MLP; None derives `4 * hidden_size`.
        max_position_embeddings (`int`, defaults to 128): longest context the model is meant for (rotary positions
            have no table; generation warns past it).
        hidden_act (`str`, defaults to `"gelu"`): MLP activation, one of `relu`, `tanh`, `gelu`, `silu`, `sigmoid`.
        rms_norm_eps (`float`, defaults to 1e-6): epsilon of the RMSNorms.
        rope_theta (`float`, defaults to 10000.0): base of the rotary position embedding.
        attention_dropout (`float`, defaults to 0.0): dropout on the attention weights.
        initializer_range (`float`, defaults to 0.02): std of the normal initialisation of every weight matrix.
        use_cache (`bool`, defaults to True): return the KV cache (generation).
        num_areas (`int`, defaults to 16): K, areas of each block's MLP. `1` gives a dense MLP.
        area_down_proj (`bool`, defaults to False): route the MLP down-projection through the token's area too
            (K times its parameters); by default only the up-projection is split into areas and the
            down-projection is one dense matrix that reads every area's features.
        area_init (`str`, defaults to `"identical"`): `identical` starts all areas as copies of one draw,
            `independent` draws each.
        router (`str`, defaults to `"learned"`): `learned` trains the routing projection by its local rule,
            `random` keeps it at its random draw.
        routing_dim (`int`, defaults to 32): size of the routing space.
        routing_balance_rate (`float`, defaults to 1e-2): step of the load-balancing bias per optimizer step. Ten
            times the MLP's: a block's hidden states drift fast early in training and the router's running mean
            lags, so with 1e-3 the tokens collapsed onto one area (96-99 % of them over the first 100 steps); 1e-2
            kept every area's share <= 0.35 (K = 4) and gave the best validation bits per byte of {1e-3, 1e-2, 5e-2}
            (fortunes, 2 blocks, width 64, 200 steps, one seed: 3.742, 3.738, 3.758; a first check, not a tuning).
        routing_center_momentum (`float`, defaults to 0.01): momentum of the router's running input mean.
        routing_loss_weight (`float`, defaults to 1.0): weight of the routers' local objective.
        router_lr_scale (`float`, defaults to 1.0): learning-rate multiplier of the learned routing projections,
            applied by [`SALTrainer`] (see [`SALConfig`], whose MLP at the full lr moved most images to another area
            every epoch and left a quarter of the areas dead, and at its default 0.01 kept every area alive). The
            transformer keeps the full lr: its routers balance (`routing_balance_rate` 1e-2) and 0.01 scored about 0.002
            bits per byte worse on the fortunes LM (docs/RESULTS_TEXT.md, `+slow-router`).
        dual_path (`bool`, *optional*): a shared dense up-projection beside the areas, summed before the
            activation (with `area_down_proj`, a shared down-projection too). None derives False (areas only):
            removing the shared path improved SAL-4's validation bits per byte by 0.17-0.23 on each of 3 seeds
            (3.50 vs 3.70; docs/RESULTS_TEXT.md, ablation of the reduced fortunes LM run). Unlike [`SALConfig`],
            whose MLP measured better with it (docs/ABLATIONS.md).
        area_lr_scale (`float`, *optional*): learning-rate multiplier of the area parameters, applied by
            [`SALTrainer`]. None derives `1 / num_areas` (1.0 for one area).
        learning_rule (`str`, defaults to `"sal"`): `sal` or `dfa` (block-local direct feedback: no gradient
            crosses a block boundary; `dfa` is the name for the dense, K = 1 baseline) or `bp` (end-to-end
            backpropagation of the same architecture).
        feedback_points (`str`, defaults to `"block"`): where the feedback enters: `block`, one point per block
            output; `micro`, also one after the attention sublayer (the MLP then reads a detached input).
        error_source (`str`, defaults to `"hidden"`): the error that is projected to the blocks: `hidden`, the
            gradient of the loss at the final hidden state (true backprop through the final norm and the head
            only, Launay et al. 2020); `vocab`, the error at the logits through a fixed random (V x d) matrix
            per point ((num_labels x d) for classification).
        feedback_alignment (`str`, *optional*): what each feedback point receives. `identity`: the error at the
            final hidden state itself (`B_l = I`, frozen; needs `error_source="hidden"`): the exact gradient at the
            last block's output, and for earlier blocks the gradient along the residual stream's skip path only (the
            later blocks' own Jacobians are left out); it reads no forward weight. `fixed`: that error through a
            frozen random matrix per point (direct feedback alignment as published, Launay et al. 2020).
            `kolen_pollack`: learnable matrices starting from the same draw, each receiving the gradient
            `sum_t e_t^T o_l,t + feedback_decay * B_l` from the error and its own point's output (direct
            Kolen-Pollack, Webster et al. 2020); local signals only, no weight transport. Unset (None, see
            `effective_feedback_alignment`): `identity` for `learning_rule="sal"` with `error_source="hidden"`
            (measured better, docs/RESULTS_TEXT.md), else `fixed` (`dfa` stays the published algorithm). (`sign`,
            offered by [`SALConfig`], needs layer-wise feedback: not for the transformer.)
        feedback_decay (`float`, defaults to 0.0): `lambda` of the Kolen-Pollack update (only with
            `feedback_alignment="kolen_pollack"`).
        routing_seed (`int`, defaults to 0): seed of prototypes and initial routing projections (block l uses
            `routing_seed + 2 l`).
        feedback_seed (`int`, defaults to 1000): seed of the fixed feedback matrices (point i uses
            `feedback_seed + i`).
        area_implementation (`str`, defaults to `"auto"`): `split`, `masked` or `auto`, as in [`SALConfig`]; not
            saved with the checkpoint.
        tie_word_embeddings (`bool`, defaults to False): tie the LM head to the input embedding. Only with
            `learning_rule="bp"`: under a local rule the head's true-error update would reach the embedding.
        pad_token_id, bos_token_id, eos_token_id (`int`, *optional*): special tokens.

    Example:

    ```python
    >>> from sal_hf import SALTransformerConfig, SALTransformerForCausalLM
    >>> model = SALTransformerForCausalLM(SALTransformerConfig(vocab_size=512, hidden_size=64, num_areas=4))
    ```
    """

    model_type = "sal_transformer"
    keys_to_ignore_at_inference = [
        "cache",
        "past_key_values",
        "areas",
        "feedback_outputs",
        "head_input",
        "routing_losses",
        "pooled_positions",
    ]

    vocab_size: int = 8192
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int | None = None
    max_position_embeddings: int = 128
    hidden_act: str = "gelu"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    use_cache: bool = True
    num_areas: int = 16
    area_down_proj: bool = False
    area_init: str = "identical"
    router: str = "learned"
    routing_dim: int = 32
    routing_balance_rate: float = 1e-2
    routing_center_momentum: float = 0.01
    routing_loss_weight: float = 1.0
    router_lr_scale: float = 1.0
    dual_path: bool | None = None
    area_lr_scale: float | None = None
    learning_rule: str = "sal"
    feedback_points: str = "block"
    error_source: str = "hidden"
    feedback_alignment: str | None = None
    feedback_decay: float = 0.0
    routing_seed: int = 0
    feedback_seed: int = 1000
    area_implementation: str = "auto"
    tie_word_embeddings: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        # PreTrainedConfig keeps any unknown keyword as an attribute; one that configures the MLP would then be saved
        # and silently ignored, so those are refused by name.
        mlp_only = sorted(set(kwargs) & (set(SALConfig.__dataclass_fields__) - set(type(self).__dataclass_fields__)))
        if mlp_only:
            raise ValueError(
                f"{type(self).__name__} got {', '.join(f'{k}={kwargs[k]!r}' for k in mlp_only)}: SALConfig fields (the MLP "
                "of SALForImageClassification) that the transformer does not use. Remove them; its feedback is set by "
                "feedback_points, error_source and feedback_alignment (docs/TEXT.md)."
            )
        self._check_llama_fields(kwargs)
        super().__post_init__(**kwargs)
        self.validate_sal()
        for message in self.ignored_settings():
            logger.warning(message)

    def ignored_settings(self) -> list[str]:
        """A line for each field set away from its default where the rest of the config gives it no effect (valid,
        so a warning, not an error): as `SALConfig.ignored_settings`."""
        return ignored_in_both(self)

    def _check_llama_fields(self, kwargs: dict) -> None:
        """Llama-style fields (a ported config): pop those that say what this model already does (the derived
        `head_dim`, as many key-value heads as heads, no biases; `rope_parameters` of the default RoPE, whose
        `rope_theta` is taken), refuse those it cannot do, which PreTrainedConfig would keep and the model ignore."""
        heads = self.num_attention_heads
        rope = kwargs.pop("rope_parameters", None)
        if rope is not None:
            plain = isinstance(rope, dict) and rope.get("rope_type", "default") == "default"
            if not plain or set(rope) - {"rope_type", "rope_theta"}:
                raise ValueError(
                    f"{type(self).__name__} got rope_parameters={rope!r}: only the default RoPE is implemented (no "
                    "scaling). Pass rope_theta=... alone, or rope_parameters={'rope_type': 'default', "
                    "'rope_theta': ...}."
                )
            theta = float(rope.get("rope_theta", self.rope_theta))
            if self.rope_theta != type(self).rope_theta and theta != self.rope_theta:
                raise ValueError(
                    f"{type(self).__name__} got rope_theta={self.rope_theta} and rope_parameters with rope_theta="
                    f"{theta}: give one of them."
                )
            self.rope_theta = theta
        same = {
            # (With no valid head count, validate_sal names num_attention_heads.)
            "head_dim": (
                self.hidden_size // heads if isinstance(heads, int) and heads > 0 else None,
                "hidden_size / num_attention_heads",
            ),
            "num_key_value_heads": (heads, "num_attention_heads (grouped-query attention is not implemented)"),
            "attention_bias": (False, "False (the attention projections have no bias)"),
            "mlp_bias": (False, "False (the MLP projections have no bias)"),
            "rope_scaling": (None, "None (RoPE scaling is not implemented)"),
            "sliding_window": (None, "None (sliding-window attention is not implemented)"),
        }
        for field, (value, meaning) in same.items():
            if field in kwargs:
                given = kwargs.pop(field)
                if field == "head_dim" and value is None:
                    continue  # no valid head count: validate_sal names num_attention_heads
                if given is not None and given != value:
                    raise ValueError(
                        f"{type(self).__name__} got {field}={given!r}: this transformer has {field} = {meaning}. "
                        f"Remove {field}, or set it to {value!r}."
                    )

    def validate_sal(self) -> None:
        """Raise a `ValueError` naming the field, its value and the fix for every invalid setting. Models call it
        again at construction: `from_pretrained(dir, num_areas=4)` sets fields after the config validated."""
        name = type(self).__name__
        ints = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings")
        for field in (*ints, "num_areas", "routing_dim", "routing_seed", "feedback_seed"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name}.{field} must be an int; got {field}={value!r}.")
        for field in (*ints, "num_areas", "routing_dim"):
            if getattr(self, field) < 1:
                raise ValueError(f"{name}.{field} must be >= 1; got {field}={getattr(self, field)!r}.")
        raw = self.intermediate_size
        if raw is not None and (not isinstance(raw, int) or isinstance(raw, bool) or raw < 1):
            raise ValueError(
                f"{name}.intermediate_size must be a positive int or None (= 4 * hidden_size); got "
                f"intermediate_size={raw!r}."
            )
        if self.hidden_size % self.num_attention_heads or (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError(
                f"hidden_size={self.hidden_size} must split into num_attention_heads={self.num_attention_heads} heads "
                "of an even size (rotary embeddings rotate pairs). Change hidden_size or num_attention_heads."
            )
        choices = {
            "hidden_act": tuple(ACTIVATIONS),
            "area_init": AREA_INITS,
            "router": ROUTERS,
            "learning_rule": TRANSFORMER_RULES,
            "feedback_points": FEEDBACK_POINTS,
            "error_source": ERROR_SOURCES,
            "area_implementation": AREA_IMPLEMENTATIONS,
        }
        for field, allowed in choices.items():
            value = getattr(self, field)
            if value not in allowed:
                fix = " (layerwise feedback is not implemented for the transformer)" if value == "fa" else ""
                raise ValueError(f"{name}.{field} must be one of {allowed}; got {field}={value!r}{fix}.")
        if self.feedback_alignment is not None and self.feedback_alignment not in BLOCK_FEEDBACK_ALIGNMENTS:
            fix = (
                " ('sign' copies the signs of the next layer's forward weights, which only layer-wise feedback has: "
                "the transformer's feedback is direct)"
                if self.feedback_alignment == "sign"
                else ""
            )
            raise ValueError(
                f"{name}.feedback_alignment must be one of {BLOCK_FEEDBACK_ALIGNMENTS}; got "
                f"feedback_alignment={self.feedback_alignment!r}{fix}. Use 'identity', 'fixed', 'kolen_pollack' or "
                "None (derive)."
            )
        if self.feedback_alignment == "identity" and self.error_source != "hidden":
            raise ValueError(
                f"feedback_alignment='identity' sends the error at the final hidden state (hidden_size values per "
                f"token) to every block as it is; got error_source={self.error_source!r}, whose error has another "
                "size. Use error_source='hidden' (the default) or feedback_alignment='fixed'."
            )
        if self.learning_rule == "bp" and self.feedback_alignment not in (None, "fixed"):
            raise ValueError(
                f"feedback_alignment={self.feedback_alignment!r} refines the feedback of a local rule; "
                "learning_rule='bp' has no feedback matrices. Use learning_rule='sal' or 'dfa', or "
                "feedback_alignment='fixed'."
            )
        for field in ("routing_balance_rate", "routing_loss_weight", "attention_dropout", "initializer_range"):
            check_number(name, field, getattr(self, field))
        check_number(name, "feedback_decay", self.feedback_decay)
        for field in ("rms_norm_eps", "rope_theta", "router_lr_scale"):
            check_number(name, field, getattr(self, field), strict=True)
        check_number(name, "area_lr_scale", self.area_lr_scale, strict=True, optional=True)
        if isinstance(self.routing_center_momentum, bool) or not 0.0 < self.routing_center_momentum <= 1.0:
            raise ValueError(
                f"{name}.routing_center_momentum must be in (0, 1]; got "
                f"routing_center_momentum={self.routing_center_momentum!r}."
            )
        if self.dual_path not in (None, True, False):
            raise ValueError(f"{name}.dual_path must be a bool or None; got dual_path={self.dual_path!r}.")
        for field in ("area_down_proj", "use_cache", "tie_word_embeddings"):  # a string "false" would read as True
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"{name}.{field} must be a bool; got {field}={getattr(self, field)!r}.")
        for field in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, field)
            for token in value if isinstance(value, (list, tuple)) else [value]:
                if token is not None and (
                    not isinstance(token, int) or isinstance(token, bool) or not 0 <= token < self.vocab_size
                ):
                    raise ValueError(
                        f"{name}.{field} must be a token id in [0, vocab_size={self.vocab_size}) or None; got "
                        f"{field}={value!r}. Take it from the tokenizer (tokenizer.{field}) and set "
                        "vocab_size=len(tokenizer)."
                    )
        if self.num_areas == 1 and self.dual_path:
            raise ValueError("dual_path=True needs areas; got num_areas=1. Set num_areas > 1 or dual_path=None.")
        if self.num_areas == 1 and self.area_down_proj:
            raise ValueError(
                "area_down_proj=True needs areas; got num_areas=1. Set num_areas > 1 or area_down_proj=False."
            )
        if self.tie_word_embeddings and self.learning_rule != "bp":
            raise ValueError(
                f"tie_word_embeddings=True with learning_rule={self.learning_rule!r}: the LM head learns from the true "
                "error, and tied weights would carry that update into the input embedding (block 0's parameters). "
                "Set tie_word_embeddings=False, or train with learning_rule='bp'."
            )
        if self.learning_rule != "bp" and self.problem_type not in (None, "single_label_classification"):
            raise ValueError(
                f"The local rules' error is that of a softmax cross-entropy; got problem_type={self.problem_type!r}. "
                "Use problem_type=None or 'single_label_classification', or learning_rule='bp'."
            )

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> tuple[dict, dict]:
        """[`PreTrainedConfig.get_config_dict`], refusing a checkpoint of another model type (transformers would
        only warn and build this model from a foreign config)."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ValueError(
                f"{pretrained_model_name_or_path} has model_type={model_type!r}, not {cls.model_type!r}: it is not a "
                "SAL transformer checkpoint. Load it with AutoModel / the class of that model type."
            )
        return config_dict, kwargs

    def to_dict(self) -> dict[str, Any]:
        """[`PreTrainedConfig.to_dict`] without `area_implementation` (how this machine runs the areas, not part
        of the model)."""
        output = super().to_dict()
        output.pop("area_implementation", None)
        return output

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """[`PreTrainedConfig.from_dict`] of a config saved before `feedback_alignment` or `router_lr_scale` existed:
        see `configuration_sal.with_saved_defaults`."""
        # Llama-style overrides (`from_pretrained(dir, head_dim=...)`) go through the constructor's checks, not
        # through setattr (a property) or back to the caller unused.
        llama = {key: kwargs.pop(key) for key in LLAMA_FIELDS if key in kwargs}
        return super().from_dict({**with_saved_defaults(config_dict, kwargs), **llama}, **kwargs)

    @property
    def effective_feedback_alignment(self) -> str:
        """`feedback_alignment`, or when unset: `identity` for `learning_rule="sal"` with `error_source="hidden"` (on
        the reduced fortunes LM it cut SAL-4's validation bits per byte from 3.50 to about BP's, docs/RESULTS_TEXT.md),
        else `fixed` (`dfa` names the published algorithm; `vocab` errors have another size). Derived on read, like
        the other `effective_*` values, so a checkpoint loaded with another rule derives its own."""
        if self.feedback_alignment is not None:
            return self.feedback_alignment
        return "identity" if self.learning_rule == "sal" and self.error_source == "hidden" else "fixed"

    @property
    def effective_intermediate_size(self) -> int:
        """`intermediate_size`, or when unset `4 * hidden_size`."""
        return self.intermediate_size if self.intermediate_size is not None else 4 * self.hidden_size

    @property
    def effective_dual_path(self) -> bool:
        """`dual_path`, or when unset False: areas only. On text the shared path beside the areas cost SAL-4
        0.17-0.23 validation bits per byte on each of 3 seeds (docs/RESULTS_TEXT.md, ablation; before 2026-11-29
        unset derived `num_areas > 1`, as in the MLP, where it measured better: docs/ABLATIONS.md)."""
        return bool(self.dual_path) if self.dual_path is not None else False

    @property
    def effective_area_lr_scale(self) -> float:
        """`area_lr_scale`, or when unset `1 / num_areas` (Adam-style optimizers give every area a step of about lr
        whatever its token count; this slows the areas to the pace of a dense layer)."""
        return float(self.area_lr_scale) if self.area_lr_scale is not None else 1.0 / self.num_areas

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_feedback_points(self) -> int:
        """Feedback points of the local rules: one per block, two with `feedback_points="micro"`."""
        return self.num_hidden_layers * (2 if self.feedback_points == "micro" else 1)


__all__ = ["SALTransformerConfig"]
