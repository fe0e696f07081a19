"""SAL transformer classes: rotary attention, the SAL MLP, the decoder block, the pretrained base, the model and its
causal-LM and sequence-classification heads.

The model computes outputs and knows nothing of how it is trained. With ``local=True`` every block after the first
reads a detached copy of its input (block 0 reads the embedding, which so learns from block 0's signal), the final
norm and head read a detached leaf ``head_input``, and the output carries what a block-local rule needs: the
outputs of the feedback points, the areas and the routers' own losses. The rule lives in ``block_rule.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging

from .activations import ACTIVATIONS
from .areas import SALAreaLinear
from .configuration_sal_transformer import SALTransformerConfig
from .feedback import FeedbackMatrices
from .modeling_sal import SALRoutingMixin, class_ids, id_range
from .routing import AreaRouter


logger = logging.get_logger(__name__)


def rotary_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables for ``position_ids`` (B, T): cos and sin, (B, T, head_dim). Computed on the fly (a few
    kernels), so the model holds no non-persistent buffer that loading would have to rebuild."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float) / head_dim))
    freqs = position_ids[..., None].float() * inv_freq  # (B, T, head_dim / 2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, head_dim)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention, (B, nh, T, hd) in, (B, T, nh, hd) out; the mask is additive (transformers' eager
    mask from `create_causal_mask`)."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, nh, T, S)
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class SALTransformerAttention(nn.Module):
    """Causal multi-head self-attention with rotary positions; the kernel comes from transformers'
    `ALL_ATTENTION_FUNCTIONS` (`config._attn_implementation`: sdpa by default, eager as fallback)."""

    def __init__(self, config: SALTransformerConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = 1
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        size = config.hidden_size
        self.q_proj = nn.Linear(size, size, bias=False)
        self.k_proj = nn.Linear(size, size, bias=False)
        self.v_proj = nn.Linear(size, size, bias=False)
        self.o_proj = nn.Linear(size, size, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns ``(output (B, T, d), attention weights (B, nh, T, S) or None)``: the eager kernel returns its
        weights, sdpa none."""
        batch, length, _ = hidden_states.shape
        shape = (batch, length, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(shape).transpose(1, 2)  # (B, nh, T, hd)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        cos, sin = (t.unsqueeze(1) for t in position_embeddings)  # (B, 1, T, hd)
        query = query * cos + rotate_half(query) * sin
        key = key * cos + rotate_half(key) * sin
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)  # (B, nh, S, hd)
        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, weights = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.config.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
        )
        return self.o_proj(output.reshape(batch, length, -1)), weights  # (B, T, d)


class SALTransformerMLP(nn.Module):
    """The SAL MLP of one block: each token routed to one of K areas on its own normalised hidden state (hard
    top-1, learned projection against frozen prototypes), ``y = W_down f(A_k x + S x)``. ``A_k`` is the area's
    up-projection (tokens grouped by area in `SALAreaLinear`, no loop over tokens), ``S`` the shared dense path
    (`config.dual_path`); the down-projection is one dense matrix, or per area with `config.area_down_proj` (plus
    a shared one with the dual path)."""

    def __init__(self, config: SALTransformerConfig, layer_idx: int) -> None:
        super().__init__()
        size, inner, areas = config.hidden_size, config.effective_intermediate_size, config.num_areas
        self.router = None
        if areas > 1:
            self.router = AreaRouter(
                size,
                areas,
                config.routing_dim,
                learned=config.router == "learned",
                seed=config.routing_seed + 2 * layer_idx,
                balance_rate=config.routing_balance_rate,
                center_momentum=config.routing_center_momentum,
            )
        self.up = SALAreaLinear(size, inner, areas, implementation=config.area_implementation)
        self.shared_up = nn.Linear(size, inner, bias=False) if config.effective_dual_path else None
        self.down = (
            SALAreaLinear(inner, size, areas, implementation=config.area_implementation)
            if config.area_down_proj
            else nn.Linear(inner, size, bias=False)
        )
        self.shared_down = (
            nn.Linear(inner, size, bias=False) if config.area_down_proj and config.effective_dual_path else None
        )
        self.activation = ACTIVATIONS[config.hidden_act]

    def forward(
        self, x: torch.Tensor, local: bool = False, token_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``x`` (B, T, d), ``token_mask`` (B, T) or None. Returns ``(y, area, routing_loss)``: (B, T, d), the
        area of every token (B, T) long or None (K = 1), and the router's local loss with ``local``. Padding
        (``token_mask`` 0) moves no routing statistic or loss and goes through no area (the shared path only), so an
        area that only padding was routed to gets no gradient and no optimizer step."""
        batch, length, size = x.shape
        flat = x.reshape(batch * length, size)  # (N, d)
        area, routing_loss = None, None
        mask = token_mask.reshape(-1).bool() if token_mask is not None else None  # (N,)
        if self.router is not None:
            area, routed = self.router(flat, mask)  # (N,), (N, d_r)
            if local and self.router.learned:
                routing_loss = self.router.local_loss(routed, area, mask)
        a = self.up(flat, area, mask=mask)  # (N, inner)
        if self.shared_up is not None:
            a = a + self.shared_up(flat)
        h = self.activation(a)
        y = self.down(h, area, mask=mask) if isinstance(self.down, SALAreaLinear) else self.down(h)  # (N, d)
        if self.shared_down is not None:
            y = y + self.shared_down(h)
        return y.view(batch, length, size), (area.view(batch, length) if area is not None else None), routing_loss


@dataclass
class SALTransformerBlockOutput:
    hidden_states: torch.Tensor
    attention_output: torch.Tensor
    area: torch.Tensor | None
    routing_loss: torch.Tensor | None
    attention_weights: torch.Tensor | None = None


class SALTransformerBlock(nn.Module):
    """Pre-norm decoder block: ``m = x + Attn(norm(x))``, ``out = m + MLP(norm(m))``. With ``local`` and
    ``micro`` feedback the MLP half reads a detached ``m``: the point after attention is a block boundary too."""

    def __init__(self, config: SALTransformerConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = SALTransformerAttention(config, layer_idx)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = SALTransformerMLP(config, layer_idx)

    def forward(
        self,
        x: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
        local: bool = False,
        micro: bool = False,
        token_mask: torch.Tensor | None = None,
    ) -> SALTransformerBlockOutput:
        attended, weights = self.self_attn(self.input_layernorm(x), position_embeddings, attention_mask, cache)
        m = x + attended
        mlp_input = m.detach() if local and micro else m
        y, area, routing_loss = self.mlp(self.post_attention_layernorm(mlp_input), local=local, token_mask=token_mask)
        return SALTransformerBlockOutput(mlp_input + y, m, area, routing_loss, weights)


@dataclass
class SALTransformerModelOutput(BaseModelOutputWithPast):
    """[`BaseModelOutputWithPast`] plus what SAL records.

    Args:
        areas (`tuple[torch.Tensor | None]`): area of every token in each block's MLP, `(batch, length)` long (None
            when `num_areas == 1`). Returned in training and local forwards, and with `return_areas=True`.
        feedback_outputs (`tuple[torch.Tensor]`, *optional*): with `local=True`, the output of each feedback
            point (per block: after attention if `feedback_points="micro"`, then the block output), each with a
            graph inside its block only.
        head_input (`torch.Tensor`, *optional*): with `local=True`, the last block's output as a detached leaf that
            requires grad: the final norm (and a head) read it, so the error at the final hidden state is its gradient.
        routing_losses (`tuple[torch.Tensor]`, *optional*): with `local=True`, the learned routers' local objectives.
    """

    areas: tuple[torch.Tensor | None, ...] | None = None
    feedback_outputs: tuple[torch.Tensor, ...] | None = None
    head_input: torch.Tensor | None = None
    routing_losses: tuple[torch.Tensor, ...] | None = None


@dataclass
class SALTransformerCausalLMOutput(CausalLMOutputWithPast):
    """[`CausalLMOutputWithPast`] plus `areas`, `feedback_outputs`, `head_input`, `routing_losses` (see
    [`SALTransformerModelOutput`]) and, with `local=True` under a local rule, `feedback`: views of the feedback
    matrices the rule uses (learned ones are then part of the forward's graph, which DDP needs)."""

    areas: tuple[torch.Tensor | None, ...] | None = None
    feedback_outputs: tuple[torch.Tensor, ...] | None = None
    head_input: torch.Tensor | None = None
    routing_losses: tuple[torch.Tensor, ...] | None = None
    feedback: tuple[torch.Tensor, ...] | None = None


@dataclass
class SALTransformerSequenceClassifierOutput(SequenceClassifierOutputWithPast):
    """[`SequenceClassifierOutputWithPast`] plus `areas`, `feedback_outputs`, `head_input`, `routing_losses`,
    `feedback` (see [`SALTransformerModelOutput`], [`SALTransformerCausalLMOutput`]) and `pooled_positions`, the
    position each sequence is classified from, (batch,)."""

    areas: tuple[torch.Tensor | None, ...] | None = None
    feedback_outputs: tuple[torch.Tensor, ...] | None = None
    head_input: torch.Tensor | None = None
    routing_losses: tuple[torch.Tensor, ...] | None = None
    feedback: tuple[torch.Tensor, ...] | None = None
    pooled_positions: torch.Tensor | None = None


class SALTransformerPreTrainedModel(SALRoutingMixin, PreTrainedModel):
    config: SALTransformerConfig
    config_class = SALTransformerConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("text",)
    supports_gradient_checkpointing = False
    _no_split_modules = ["SALTransformerBlock"]
    _supports_sdpa = True
    _supports_attention_backend = False

    def __init__(self, config: SALTransformerConfig, *inputs, **kwargs) -> None:
        # `from_pretrained(..., num_areas=4)` sets attributes after the config validated itself: check again.
        config.validate_sal()
        super().__init__(config, *inputs, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # `init.*` skips tensors loaded from a checkpoint, so loading never overwrites them.
        std = self.config.initializer_range
        if isinstance(module, SALAreaLinear):
            for k, (weight, bias) in enumerate(zip(module.weights, module.biases)):
                if k > 0 and self.config.area_init == "identical":
                    init.copy_(weight, module.weight_0)
                else:
                    init.normal_(weight, mean=0.0, std=std)
                init.zeros_(bias)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, (AreaRouter, FeedbackMatrices)):
            for name, value in module.initial_values().items():
                init.copy_(getattr(module, name), value)

    # Each auto class loads any SAL transformer checkpoint as remote code (`SALRoutingMixin.save_pretrained`).
    _sal_remote_classes = {
        "AutoModel": "SALTransformerModel",
        "AutoModelForCausalLM": "SALTransformerForCausalLM",
        "AutoModelForSequenceClassification": "SALTransformerForSequenceClassification",
    }

    def feedback_matrices(self) -> list[torch.Tensor]:
        """The ``B_l`` of every feedback point, in point order (what `SALTrainer` hands the rule)."""
        if getattr(self, "feedback", None) is None:
            raise ValueError(f"learning_rule={self.config.learning_rule!r} has no feedback matrices.")
        return self.feedback.matrices()

    def _make_feedback(self, error_size: int) -> FeedbackMatrices | None:
        """The random ``B_l`` of every feedback point, (error_size, d) each: frozen buffers, or parameters starting
        from the same draw with `feedback_alignment="kolen_pollack"`, or frozen identities with `"identity"`; None
        under `bp`."""
        config = self.config
        if config.learning_rule == "bp":
            return None
        sizes = [config.hidden_size] * config.num_feedback_points
        return FeedbackMatrices(
            sizes,
            error_size,
            mode="direct",
            seed=config.feedback_seed,
            learned=config.effective_feedback_alignment == "kolen_pollack",
            identity=config.effective_feedback_alignment == "identity",
        )


class SALTransformerModel(SALTransformerPreTrainedModel):
    """The decoder without a head: token embedding, blocks, final RMSNorm. `last_hidden_state` is normalised."""

    def __init__(self, config: SALTransformerConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(SALTransformerBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        local: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        return_areas: bool | None = None,
        **kwargs: Any,
    ) -> SALTransformerModelOutput | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch, length)`): token ids.
            attention_mask (`torch.Tensor` of shape `(batch, past + length)`, *optional*): 1 for tokens, 0 for padding.
            position_ids (`torch.LongTensor`, *optional*): positions; default `past + arange(length)`.
            cache (`Cache`, *optional*): KV cache (also accepted as `past_key_values`).
            inputs_embeds (`torch.Tensor`, *optional*): embeddings instead of `input_ids`.
            use_cache (`bool`, *optional*): start a cache when none is given; defaults to `config.use_cache` outside
                training. A cache that is given is always used and returned.
            local (`bool`, defaults to `False`): block-local forward for the local rules (see the module doc).
            output_hidden_states (`bool`, *optional*): return the embedding and every block's output, the last one
                after the final norm (`last_hidden_state`), as transformers' language models do.
            return_areas (`bool`, *optional*): return `areas`, the area of every token in each block. Defaults to True
                in training mode and in local forwards, False otherwise: like transformers' optional outputs, off at
                inference (pipelines split every output tensor per sample, and a per-block tuple cannot be split so).
        """
        if cache is None:
            cache = kwargs.pop("past_key_values", None)
        output_attentions = kwargs.get("output_attentions")
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        if output_attentions and self.config._attn_implementation != "eager":
            raise ValueError(
                f"output_attentions=True needs the eager attention kernel; this model uses "
                f"{self.config._attn_implementation!r}, which does not return its weights. Load it with "
                "from_pretrained(..., attn_implementation='eager') or call model.set_attn_implementation('eager')."
            )
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Specify exactly one of input_ids or inputs_embeds.")
        check_inputs(
            input_ids, inputs_embeds, attention_mask, cache.get_seq_length() if cache is not None else 0, self.config
        )
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if local:
            if cache is not None:
                raise ValueError(
                    "A local (training) forward takes whole sequences and no KV cache; drop `past_key_values`/`cache`."
                )
            use_cache = False
        # A cache the caller gives is used whatever `use_cache` says (as transformers' Llama does): dropping it would
        # give the new tokens no past and restart their positions at 0. `use_cache` only decides whether to start one.
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        length = inputs_embeds.shape[1]
        if position_ids is not None:
            if position_ids.dim() not in (1, 2) or position_ids.shape[-1] != length:
                raise ValueError(
                    f"position_ids must have shape (batch, {length}) or ({length},); got {tuple(position_ids.shape)}."
                )
            position_ids = position_ids.view(-1, length)  # (T,) -> (1, T), shared by the batch
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = (torch.arange(length, device=inputs_embeds.device) + past).unsqueeze(0)  # (1, T)
        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )
        position_embeddings = rotary_cos_sin(
            position_ids, self.config.head_dim, self.config.rope_theta, inputs_embeds.dtype
        )
        token_mask = None  # padding: no routing statistic, no routing loss
        if attention_mask is not None and attention_mask.dim() == 2:
            token_mask = attention_mask[:, -length:]  # (B, T)
        micro = self.config.feedback_points == "micro"

        h = inputs_embeds
        hidden_states, areas, points, routing_losses, attentions = [h], [], [], [], []
        for index, block in enumerate(self.layers):
            # The block boundary: no gradient crosses it. Block 0 keeps the embedding in its graph.
            x = h.detach() if local and index > 0 else h
            out = block(x, position_embeddings, causal_mask, cache, local=local, micro=micro, token_mask=token_mask)
            h = out.hidden_states
            hidden_states.append(h)
            areas.append(out.area)
            attentions.append(out.attention_weights)
            if local:
                if micro:
                    points.append(out.attention_output)
                points.append(h)
                if out.routing_loss is not None:
                    routing_losses.append(out.routing_loss)
        head_input = h.detach().requires_grad_(True) if local else None
        last = self.norm(head_input if local else h)
        output = SALTransformerModelOutput(
            last_hidden_state=last,
            cache=cache,
            # The last entry normalised, as transformers' language models return it (`tie_last_hidden_states`).
            hidden_states=(*hidden_states[:-1], last) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
            areas=tuple(areas) if self.returns_areas(return_areas, local) else None,
            feedback_outputs=tuple(points) if local else None,
            head_input=head_input,
            routing_losses=tuple(routing_losses) if local else None,
        )
        return output if return_dict else output.to_tuple()


def check_inputs(
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    past: int,
    config: SALTransformerConfig,
) -> None:
    """Raise a ValueError naming the value and the fix unless ``input_ids`` (or ``inputs_embeds``) and
    ``attention_mask`` are what the model reads: (batch, length) integer ids in ``[0, vocab_size)`` (or (batch, length,
    hidden_size) embeddings), and a (batch, past + length) 2-D mask (a 4-D mask is taken as given). Torch would say
    "index out of range in self" (a device-side assert on CUDA), "not enough values to unpack", or mask nothing
    where the mask is too long."""
    if input_ids is not None:
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor; got {type(input_ids).__name__}.")
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise ValueError(
                f"input_ids must be integer token ids; got dtype={input_ids.dtype}. Pass the tokenizer's ids "
                "(return_tensors='pt'), or embeddings as inputs_embeds."
            )
        shape, what = tuple(input_ids.shape), "input_ids"
        if input_ids.dim() != 2:
            hint = " Add a batch dimension with input_ids.unsqueeze(0)." if input_ids.dim() == 1 else ""
            raise ValueError(f"input_ids must have shape (batch, length); got {shape}.{hint}")
    else:
        shape, what = tuple(inputs_embeds.shape), "inputs_embeds"
        if inputs_embeds.dim() != 3 or shape[-1] != config.hidden_size:
            raise ValueError(
                f"inputs_embeds must have shape (batch, length, {config.hidden_size}) (config.hidden_size); got {shape}."
            )
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"Got an empty batch: {what} has shape {shape}.")
    if input_ids is not None and (bounds := id_range(input_ids)) is not None:
        bad = bounds[0] if bounds[0] < 0 else bounds[1] if bounds[1] >= config.vocab_size else None
        if bad is not None:
            raise ValueError(
                f"Token id {bad} is outside [0, {config.vocab_size}) (config.vocab_size={config.vocab_size}). The "
                "tokenizer's vocabulary is larger than the model's: build the model with vocab_size=len(tokenizer), "
                "or call model.resize_token_embeddings(len(tokenizer))."
            )
    if attention_mask is None or attention_mask.dim() == 4 or torch.compiler.is_compiling():
        return  # (a static cache's length is a tensor: compiled, the comparison would break the graph)
    expected = (shape[0], int(past) + shape[1])
    if attention_mask.dim() != 2 or tuple(attention_mask.shape) != expected:
        raise ValueError(
            f"attention_mask must have shape (batch, past + length) = {expected} (past = {int(past)} cached tokens); got "
            f"{tuple(attention_mask.shape)}. Pass the tokenizer's attention_mask for these {what}, extended by the "
            "cached tokens' mask when a cache is given."
        )


def check_lm_labels(labels: Any, shape: tuple[int, ...], vocab_size: int, ignore_index: int = -100) -> None:
    """Raise a ValueError naming the value and the fix unless ``labels`` is an integer tensor of the input's shape
    ``(batch, length)`` with token ids in ``[0, vocab_size)`` or ``ignore_index`` (-100: does not count)."""
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a tensor of token ids; got a {type(labels).__name__}.")
    if tuple(labels.shape) != tuple(shape) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(
            f"labels must be integer token ids of the input's shape {tuple(shape)} (the input ids, shifted inside; "
            f"{ignore_index} where a token does not count); got shape {tuple(labels.shape)}, dtype {labels.dtype}. "
            "DataCollatorForLanguageModeling(tokenizer, mlm=False) builds them."
        )
    bounds = id_range(labels, ignore=ignore_index)
    if bounds is not None and (bounds[0] < 0 or bounds[1] >= vocab_size):
        bad = bounds[0] if bounds[0] < 0 else bounds[1]
        raise ValueError(
            f"Label {bad} is outside [0, {vocab_size}) (config.vocab_size) and is not {ignore_index} (ignored). "
            f"Mark the positions that do not count with {ignore_index}."
        )


def _loss_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """What transformers' loss functions take from Trainer (`num_items_in_batch` under gradient accumulation)."""
    return {key: kwargs[key] for key in ("num_items_in_batch", "ignore_index") if key in kwargs}


class SALTransformerForCausalLM(SALTransformerPreTrainedModel, GenerationMixin):
    """[`SALTransformerModel`] with a linear LM head. `labels` are the input ids (shifted inside, -100 ignored),
    as in transformers' causal LMs. Holds the feedback matrices (`feedback.layer_*`) under a local rule."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    # A body's checkpoint (`SALTransformerModel`, or a classifier's) has no `lm_head`: loading one here draws it fresh,
    # as transformers' causal LMs do; a checkpoint of this class without it raises.
    _sal_new_head_prefixes = ("lm_head.",)

    def __init__(self, config: SALTransformerConfig) -> None:
        super().__init__(config)
        self.model = SALTransformerModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        error_size = config.hidden_size if config.error_source == "hidden" else config.vocab_size
        self.feedback = self._make_feedback(error_size)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def resize_token_embeddings(self, *args: Any, **kwargs: Any) -> nn.Embedding:
        """transformers' resize, and with `error_source="vocab"` the feedback matrices' rows too (one per token):
        the rows of kept tokens keep their values (learned ones included), new tokens' rows are a fresh draw."""
        embeddings = super().resize_token_embeddings(*args, **kwargs)
        old = self.feedback
        if old is not None and self.config.error_source == "vocab" and old.shapes[0][0] != self.config.vocab_size:
            reference = old.matrices()[0]
            new = self._make_feedback(self.config.vocab_size).to(device=reference.device, dtype=reference.dtype)
            with torch.no_grad():
                for kept, fresh in zip(old.matrices(), new.matrices()):
                    rows = min(len(kept), len(fresh))
                    fresh[:rows].copy_(kept[:rows])
            self.feedback = new
        return embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        local: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        return_areas: bool | None = None,
        **kwargs: Any,
    ) -> SALTransformerCausalLMOutput | tuple:
        r"""
        Args:
            labels (`torch.LongTensor` of shape `(batch, length)`, *optional*): the input ids (shifted inside);
                -100 marks positions that do not count (padding).
            logits_to_keep (`int` or `torch.Tensor`, defaults to 0): compute logits for the last `n` positions only
                (0 = all), or for the given indices.
            local (`bool`, defaults to `False`): block-local forward for the local rules.
            Others: see [`SALTransformerModel.forward`].
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        self.warn_if_backprop_training(local, labels)
        if cache is None:
            cache = kwargs.pop("past_key_values", None)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            local=local,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            return_areas=return_areas,
            output_attentions=kwargs.get("output_attentions"),  # eager attention only
        )
        hidden = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            hidden = hidden[:, -logits_to_keep:] if logits_to_keep > 0 else hidden
        else:
            hidden = hidden[:, logits_to_keep]
        logits = self.lm_head(hidden)  # (B, T, V)
        loss = None
        if labels is not None:
            loss_kwargs = _loss_kwargs(kwargs)
            check_lm_labels(
                labels,
                outputs.last_hidden_state.shape[:2],
                self.config.vocab_size,
                loss_kwargs.get("ignore_index", -100),
            )
            # The mean over the positions that count, and 0 (not 0/0) where none does: a prompt-only row (labels all
            # -100) in a micro-batch of its own, or Trainer's count of an accumulation window of such rows. No host
            # sync.
            count = loss_kwargs.get("num_items_in_batch")
            if count is None:
                ignore = loss_kwargs.get("ignore_index", -100)
                count = (labels[..., 1:] != ignore).sum()
            loss_kwargs["num_items_in_batch"] = (
                torch.where(count == 0, torch.ones_like(count), count) if torch.is_tensor(count) else count or 1
            )
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **loss_kwargs)
        output = SALTransformerCausalLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            areas=outputs.areas,
            feedback_outputs=outputs.feedback_outputs,
            head_input=outputs.head_input,
            routing_losses=outputs.routing_losses,
            feedback=self._feedback_views(local),
        )
        return output if return_dict else output.to_tuple()


def last_token_positions(
    input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, pad_token_id: int | None, length: int
) -> torch.Tensor:
    """Position of each sequence's last real token, (B,): the last 1 of a 2D `attention_mask`, else the last
    non-pad token (like transformers' `*ForSequenceClassification`), else the last position."""
    if attention_mask is not None and attention_mask.dim() == 2:
        mask = attention_mask[:, -length:].to(torch.long)
    elif input_ids is not None and pad_token_id is not None:
        mask = (input_ids != pad_token_id).to(torch.long)
    else:
        device = input_ids.device if input_ids is not None else None
        batch = input_ids.shape[0] if input_ids is not None else 1
        return torch.full((batch,), length - 1, dtype=torch.long, device=device)
    positions = torch.arange(length, device=mask.device)
    return (positions * mask).argmax(-1)  # (B,)


class SALTransformerForSequenceClassification(SALTransformerPreTrainedModel):
    """[`SALTransformerModel`] with a linear classifier on the last real token's final hidden state (like
    transformers' `LlamaForSequenceClassification`). Under a local rule the error of the classifier (at the
    final hidden state of that token, or at its logits with `error_source="vocab"`) reaches the blocks."""

    # The loss is a per-batch mean (Trainer's `num_items_in_batch` is not used): Trainer scales it for gradient
    # accumulation itself.
    accepts_loss_kwargs = False
    # A causal LM's checkpoint has no `score` head: loading one here draws it fresh (the start of fine-tuning). A
    # checkpoint of this class without it raises, like any missing weight (`SALRoutingMixin.from_pretrained`).
    _sal_new_head_prefixes = ("score.",)

    def __init__(self, config: SALTransformerConfig) -> None:
        super().__init__(config)
        if config.learning_rule != "bp" and config.num_labels < 2:
            raise ValueError(
                f"learning_rule={config.learning_rule!r} trains classifiers (softmax cross-entropy, num_labels >= 2); "
                f"got num_labels={config.num_labels} (transformers' regression). Use learning_rule='bp' for "
                "regression, or num_labels >= 2 classes."
            )
        self.num_labels = config.num_labels
        self.model = SALTransformerModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        error_size = config.hidden_size if config.error_source == "hidden" else config.num_labels
        self.feedback = self._make_feedback(error_size)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        local: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        return_areas: bool | None = None,
        **kwargs: Any,
    ) -> SALTransformerSequenceClassifierOutput | tuple:
        r"""
        Args:
            labels (`torch.Tensor` of shape `(batch,)`, *optional*): class ids in `[0, num_labels)`. With
                `learning_rule="bp"` also what transformers' `problem_type` takes: with `problem_type=None` it is
                inferred as in transformers (`num_labels == 1`: regression; float labels: multi-label).
            local (`bool`, defaults to `False`): block-local forward for the local rules.
            Others: see [`SALTransformerModel.forward`].
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        self.warn_if_backprop_training(local, labels)
        if cache is None:
            cache = kwargs.pop("past_key_values", None)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            local=local,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            return_areas=return_areas,
            output_attentions=kwargs.get("output_attentions"),  # eager attention only
        )
        hidden = outputs.last_hidden_state  # (B, T, d)
        batch, length = hidden.shape[:2]
        if batch > 1 and attention_mask is None and self.config.pad_token_id is None:
            raise ValueError(
                f"A batch of {batch} sequences with neither an attention_mask nor config.pad_token_id: the last real "
                "token of each cannot be found (transformers' classifiers refuse this too). Pass the tokenizer's "
                "attention_mask, or set config.pad_token_id."
            )
        if batch > 1 and attention_mask is None and input_ids is None:
            logger.warning_once(
                "inputs_embeds without an attention_mask: padding cannot be found in embeddings, so each sequence is "
                "classified from its last position. Pass the attention_mask if the batch is padded."
            )
        positions = last_token_positions(input_ids, attention_mask, self.config.pad_token_id, length)
        positions = positions.to(hidden.device).expand(batch) if positions.numel() == 1 else positions.to(hidden.device)
        logits = self.score(hidden[torch.arange(batch, device=hidden.device), positions])  # (B, C)
        loss = None
        if labels is not None:
            is_tensor = isinstance(labels, torch.Tensor)
            labels = labels.to(logits.device) if is_tensor else labels
            local_rule = self.config.learning_rule != "bp"
            single = local_rule or self.num_labels > 1 and not (is_tensor and labels.is_floating_point())
            if self.config.problem_type is None and single:
                self.config.problem_type = "single_label_classification"  # inferred and recorded, as transformers does
            if self.config.problem_type == "single_label_classification":
                if is_tensor and labels.dim() == 2 and labels.shape[-1] == 1:
                    labels = labels[:, 0]  # (B, 1) class ids, as transformers' loss takes them
                hint = (
                    " The local rules train single-label classifiers; for regression or multi-label targets use "
                    "learning_rule='bp' (problem_type 'regression' or 'multi_label_classification')."
                )
                labels = class_ids(labels, batch, self.num_labels, hint if local_rule else "")
                loss = F.cross_entropy(logits.float(), labels)
            else:  # transformers' own loss: infers and sets problem_type when None, as its models do
                loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        output = SALTransformerSequenceClassifierOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            areas=outputs.areas,
            feedback_outputs=outputs.feedback_outputs,
            head_input=outputs.head_input,
            routing_losses=outputs.routing_losses,
            pooled_positions=positions if local else None,
            feedback=self._feedback_views(local),
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "SALTransformerPreTrainedModel",
    "SALTransformerModel",
    "SALTransformerForCausalLM",
    "SALTransformerForSequenceClassification",
]
