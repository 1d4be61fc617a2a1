"""The Transformer of "Attention Is All You Need" (Vaswani et al., 2017) as a transformers model.

Self-contained: imports only torch, transformers and its sibling configuration file, because
`save_pretrained` copies both files next to every saved model and users load it with
`AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True)` without txkit installed.

Shapes in comments: B batch, S source length, T target length, D d_model, H heads, Dh = D / H,
V vocabulary size.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)

try:  # transformers >= 5: init helpers that skip weights already loaded from a checkpoint
    from transformers import initialization as init
except ImportError:  # pragma: no cover
    init = nn.init

from .configuration_txkit import TxkitConfig
from .loss_txkit import (  # noqa: F401  (re-exported: the training loop and tests import them from here)
    FUSED_LOSS_CPU_ELEMENTS,
    FUSED_LOSS_GPU_ELEMENTS,
    label_smoothed_nll,
    linear_label_smoothed_nll,
)

# transformers 5.24 renamed the cache that `generate` hands to `forward` (and the output field that hands it
# back) from `past_key_values` to `cache`. A saved model folder keeps this file for good, so `forward` accepts
# either name and returns the cache under the field name of the installed transformers' output classes.
CACHE_FIELD = "cache" if "cache" in Seq2SeqLMOutput.__dataclass_fields__ else "past_key_values"


def _cache_argument(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The cache passed under either name; the old name warns where transformers has deprecated it."""
    if past_key_values is None:
        return cache
    if cache is not None:
        raise ValueError("pass the cache as `cache` or as `past_key_values`, not both")
    if CACHE_FIELD == "cache":
        warnings.warn("`past_key_values` is deprecated since transformers 5.24: pass `cache`", FutureWarning, 3)
    return past_key_values


# The padding token is never a prediction. Its logit is set below the smallest logit of its row by a margin whose
# exp() underflows to 0 even in fp32 (e^-110 < 1.4e-45, the smallest fp32 number): its probability is exactly 0,
# so no search ever picks it, yet it is finite and near the other logits, so a loss computed outside txkit stays
# finite and barely moved (transformers' Trainer with label smoothing sums -log p over the whole vocabulary,
# which a -inf logit made infinite, and a fixed -1e4 shifted by eps * 1e4 / V). txkit's own loss leaves the
# padding column out altogether.
PAD_LOGIT_MARGIN = 110.0


def sinusoidal_positions(num_positions: int, d_model: int) -> torch.Tensor:
    """The paper's table: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(same), interleaved."""
    position = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)  # (P, 1)
    inv_freq = torch.pow(10000.0, -torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (D/2,)
    angles = position * inv_freq  # (P, D/2)
    table = torch.zeros(num_positions, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : d_model // 2])
    return table.float()


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """`F.dropout`, with a faster mask on CPUs. torch's CPU generator (mt19937) draws one number per call, and
    `bernoulli_` or `rand` spend a call on every element (`rand_like` on a bf16 activation of 262k values: 1.04
    ms on 2 cores); here each 64-bit draw gives four 16-bit numbers, and an element is dropped when its number
    is among the round(p * 65536) lowest (0.23 ms for the same tensor's draws; a tiny model's bf16 training step
    1.06x faster, README, Training on a CPU in bf16). The drop probability is p to within 2^-17 (0.2: 0.199997),
    and the kept values are scaled by the inverse of the exact keep probability, so the expectation is x. The
    same generator, so seeds and saved generator states still decide it; GPUs keep torch's fused kernel."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not 0.0 < p < 1.0:
        return F.dropout(x, p=p, training=True)
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)  # all 64 bits
    dropped = min(max(round(p * 65536), 1), 65535)  # of the 65536 values of an int16
    keep = words.view(torch.int16)[:n].view(x.shape) >= dropped - 32768
    return x * keep.to(x.dtype).mul_(65536 / (65536 - dropped))


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Decoder input = <start> followed by the labels minus their last token (-100 becomes padding)."""
    shifted = labels.new_full(labels.shape, pad_token_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill_(shifted.eq(-100), pad_token_id)


@dataclass
class TxkitSeq2SeqLMOutput(Seq2SeqLMOutput):
    """Seq2SeqLMOutput plus the unsmoothed loss (for perplexity) and the number of target tokens."""

    nll_loss: torch.FloatTensor | None = None
    num_tokens: torch.LongTensor | None = None


class TxkitAttention(nn.Module):
    """Multi-head scaled dot-product attention: torch's fused `scaled_dot_product_attention` by default
    (`attn_implementation="sdpa"`), or written out (`"eager"`, or whenever the attention weights are asked
    for), which is the only way to get the weights."""

    def __init__(self, config: TxkitConfig, layer_idx: int | None = None, is_cross_attention: bool = False):
        super().__init__()
        d = config.d_model
        self.config = config  # read at call time: `set_attn_implementation` may change it after loading
        # the config's own attributes: PretrainedConfig's attribute lookup costs ~500x a dict read per call
        self._config_vars = vars(config)
        self.num_heads = config.attention_heads
        self.head_dim = d // config.attention_heads
        self.dropout = config.attention_dropout
        self.layer_idx = layer_idx
        self.is_cross_attention = is_cross_attention
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), x.size(1), self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, Dh)

    # training computes the projections of one input as one matrix product (`_fused`); False: one at a time
    fuse_projections = True

    def _fused(self, x: torch.Tensor, *layers: nn.Linear) -> tuple[torch.Tensor, ...] | None:
        """The projections of `x` by `layers` as one (D, k*D) product in place of k (D, D) ones, or None where a
        layer is not a plain `nn.Linear` with a bias and no hooks (a PEFT adapter, a quantized layer): those run their
        own forward. One read of `x`, one autocast cast of it instead of k, and in the backward one product and
        no sum of k gradients of `x`: 1.02-1.03x on the bf16 CPU step of the en-de tiny recipe
        (benchmarks/bench_cpu_step.py). The parameters stay separate, as saved."""
        for layer in layers:
            plain = type(layer) is nn.Linear and layer.bias is not None
            if not plain or layer._forward_hooks or layer._forward_pre_hooks:
                return None
        weight = torch.cat([layer.weight for layer in layers])
        bias = torch.cat([layer.bias for layer in layers])
        return F.linear(x, weight, bias).split(self.head_dim * self.num_heads, dim=-1)

    def _eager(self) -> bool:
        """Whether the config asks for the written-out attention (`attn_implementation="eager"`)."""
        choice = self._config_vars.get("_attn_implementation_internal", self)  # transformers 5.0-5.24's field
        return (self.config._attn_implementation if choice is self else choice) == "eager"

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, Tq, D)
        key_value_states: torch.Tensor | None = None,  # (B, S, D) for cross-attention
        attention_mask: torch.Tensor | None = None,  # bool, broadcastable to (B, H, Tq, Tk); True = attend
        is_causal: bool = False,
        past_key_values: Cache | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, Tq, D) -> ((B, Tq, D), the attention weights (B, H, Tq, Tk) or None)."""
        qkv = None
        if self.training and past_key_values is None and self.fuse_projections:
            if self.is_cross_attention:
                kv = self._fused(key_value_states, self.k_proj, self.v_proj)
                qkv = None if kv is None else (self.q_proj(hidden_states), *kv)
            else:
                qkv = self._fused(hidden_states, self.q_proj, self.k_proj, self.v_proj)
        if qkv is not None:
            q, k, v = (self._heads(x) for x in qkv)  # (B, H, T, Dh)
        else:
            q, k, v = self._project(hidden_states, key_value_states, past_key_values)
        return self._attend(q, k, v, hidden_states.shape, attention_mask, is_causal, output_attentions)

    def _project(self, hidden_states, key_value_states, past_key_values):
        """Queries, keys and values (B, H, T, Dh), one projection at a time, through the decoding cache."""
        q = self._heads(self.q_proj(hidden_states))  # (B, H, Tq, Dh)
        if self.is_cross_attention:
            cache = past_key_values.cross_attention_cache if past_key_values is not None else None
            if cache is not None and past_key_values.is_updated.get(self.layer_idx):
                # encoder keys/values were projected once at the first step and are reused since
                k, v = cache.layers[self.layer_idx].keys, cache.layers[self.layer_idx].values
            else:
                k = self._heads(self.k_proj(key_value_states))  # (B, H, S, Dh)
                v = self._heads(self.v_proj(key_value_states))
                if cache is not None:
                    k, v = cache.update(k, v, self.layer_idx)
                    past_key_values.is_updated[self.layer_idx] = True
        else:
            k = self._heads(self.k_proj(hidden_states))  # (B, H, Tq, Dh)
            v = self._heads(self.v_proj(hidden_states))
            if past_key_values is not None:
                # decoder self-attention: append this step's keys/values to the cache
                k, v = past_key_values.self_attention_cache.update(k, v, self.layer_idx)  # (B, H, Tk, Dh)
        return q, k, v

    def _attend(self, q, k, v, shape, attention_mask, is_causal, output_attentions):
        """softmax(q k^T / sqrt(Dh)) v over the heads, projected back: ((B, Tq, D), weights or None)."""
        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if output_attentions or self._eager():
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # (B, H, Tq, Tk)
            if is_causal and attention_mask is None:  # is_causal is only set when Tq == Tk
                attention_mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
            if attention_mask is not None:
                scores = scores.masked_fill(~attention_mask, float("-inf"))
            weights = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
            out = F.dropout(weights, p=dropout_p, training=self.training) @ v  # (B, H, Tq, Dh)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attention_mask, dropout_p=dropout_p, is_causal=is_causal and attention_mask is None
            )  # (B, H, Tq, Dh)
        out = out.transpose(1, 2).reshape(shape)  # (B, Tq, D)
        return self.out_proj(out), weights


class TxkitFeedForward(nn.Module):
    """FFN(x) = act(x W1 + b1) W2 + b2, the same at every position."""

    def __init__(self, config: TxkitConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, config.ffn_dim)
        self.fc2 = nn.Linear(config.ffn_dim, config.d_model)
        self.activation = F.relu if config.activation_function == "relu" else F.gelu
        self.activation_dropout = config.activation_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.fc1(x))  # (B, L, d_ff)
        x = dropout(x, self.activation_dropout, self.training)
        return self.fc2(x)


class TxkitEncoderLayer(GradientCheckpointingLayer):
    """Self-attention and feed-forward sub-layers. `GradientCheckpointingLayer`: after
    `gradient_checkpointing_enable()` transformers recomputes the layer in the backward pass."""

    def __init__(self, config: TxkitConfig):
        super().__init__()
        self.self_attn = TxkitAttention(config)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ffn = TxkitFeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.dropout = config.dropout
        self.normalize_before = config.normalize_before

    def _sublayer(self, x, norm, fn):
        # post-norm (paper): LayerNorm(x + Dropout(f(x))); pre-norm: x + Dropout(f(LayerNorm(x)))
        # `fn` returns (output, attention weights or None); so does this
        if self.normalize_before:
            out, weights = fn(norm(x))
            return x + dropout(out, self.dropout, self.training), weights
        out, weights = fn(x)
        return norm(x + dropout(out, self.dropout, self.training)), weights

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None, output_attentions: bool = False):
        """(B, S, D) -> ((B, S, D), self-attention weights or None)"""
        x, weights = self._sublayer(
            x,
            self.self_attn_layer_norm,
            lambda h: self.self_attn(h, attention_mask=attention_mask, output_attentions=output_attentions),
        )
        return self._sublayer(x, self.final_layer_norm, self._ffn)[0], weights

    def _ffn(self, h: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.ffn(h), None  # no attention weights


class TxkitDecoderLayer(TxkitEncoderLayer):
    def __init__(self, config: TxkitConfig, layer_idx: int):
        super().__init__(config)
        self.self_attn = TxkitAttention(config, layer_idx=layer_idx)
        self.encoder_attn = TxkitAttention(config, layer_idx=layer_idx, is_cross_attention=True)
        self.encoder_attn_layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    def forward(
        self, x, self_mask, is_causal, encoder_hidden_states, encoder_mask, past_key_values=None, output_attentions=False
    ):
        """(B, T, D) -> ((B, T, D), self-attention weights or None, cross-attention weights or None)"""
        x, self_weights = self._sublayer(
            x,
            self.self_attn_layer_norm,
            lambda h: self.self_attn(
                h, attention_mask=self_mask, is_causal=is_causal, past_key_values=past_key_values,
                output_attentions=output_attentions,
            ),
        )  # fmt: skip
        x, cross_weights = self._sublayer(
            x,
            self.encoder_attn_layer_norm,
            lambda h: self.encoder_attn(
                h, key_value_states=encoder_hidden_states, attention_mask=encoder_mask,
                past_key_values=past_key_values, output_attentions=output_attentions,
            ),
        )  # fmt: skip
        return self._sublayer(x, self.final_layer_norm, self._ffn)[0], self_weights, cross_weights


class TxkitPreTrainedModel(PreTrainedModel):
    config_class = TxkitConfig
    config: TxkitConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _supports_sdpa = True
    supports_gradient_checkpointing = True
    _no_split_modules = ["TxkitEncoderLayer", "TxkitDecoderLayer"]

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            if not getattr(module.weight, "_is_hf_initialized", False) and not getattr(module, "_tied", False):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()  # the decoder's start vector is zero
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, _TxkitStack):
            # Non-persistent buffer: v5 builds models on the meta device, so rebuild it here.
            module.positions = sinusoidal_positions(self.config.max_position_embeddings, self.config.d_model).to(
                module.positions.device
            )

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        """`set_attn_implementation` works on loaded models: the attention layers read the config's choice at
        every call (transformers' own test of this looks for its attention-function registry in the source)."""
        return True

    def _flags(self, output_attentions, output_hidden_states, return_dict) -> tuple[bool, bool, bool]:
        """The call's output options, or the config's where the call leaves them None."""
        config = self.config
        return (
            config.output_attentions if output_attentions is None else output_attentions,
            config.output_hidden_states if output_hidden_states is None else output_hidden_states,
            config.return_dict if return_dict is None else return_dict,
        )


class _TxkitStack(nn.Module):
    """What encoder and decoder share: scaled token embeddings + sinusoidal positions + dropout."""

    def __init__(self, config: TxkitConfig, embed_tokens: nn.Embedding, num_layers: int):
        super().__init__()
        self.embed_tokens = embed_tokens
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.dropout = config.dropout
        self.max_positions = config.max_position_embeddings
        self.register_buffer(
            "positions", sinusoidal_positions(config.max_position_embeddings, config.d_model), persistent=False
        )
        # pre-norm needs a LayerNorm on the stack's output; the paper's post-norm has none
        self.layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if config.normalize_before else None

    def embed(self, input_ids: torch.Tensor | None, offset: int = 0, inputs_embeds: torch.Tensor | None = None):
        """Token ids (B, L), or their looked-up embeddings `inputs_embeds` (B, L, D), -> (B, L, D) input of the
        first layer: scaled embeddings + positions from `offset`, dropped out."""
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, L, D)
        length = x.size(1)
        if offset + length > self.max_positions:
            raise ValueError(
                f"sequence of {offset + length} tokens is longer than max_position_embeddings={self.max_positions}"
            )
        x = x * self.embed_scale + self.positions[offset : offset + length].to(x.dtype)
        return dropout(x, self.dropout, self.training)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(x) if self.layer_norm is not None else x


class TxkitEncoder(_TxkitStack):
    def __init__(self, config: TxkitConfig, embed_tokens: nn.Embedding):
        super().__init__(config, embed_tokens, config.encoder_layers)
        self.layers = nn.ModuleList([TxkitEncoderLayer(config) for _ in range(config.encoder_layers)])

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, S)
        attention_mask: torch.Tensor | None = None,  # (B, S), 1 = real token
        inputs_embeds: torch.Tensor | None = None,  # (B, S, D), instead of input_ids
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        **kwargs,
    ) -> BaseModelOutput | tuple:
        x = self.embed(input_ids, inputs_embeds=inputs_embeds)  # (B, S, D)
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        states = () if output_hidden_states else None  # each layer's input, then the stack's output
        attentions = () if output_attentions else None
        for layer in self.layers:
            if output_hidden_states:
                states += (x,)
            x, weights = layer(x, mask, output_attentions)
            if output_attentions:
                attentions += (weights,)
        x = self.finish(x)
        if output_hidden_states:
            states += (x,)
        out = BaseModelOutput(last_hidden_state=x, hidden_states=states, attentions=attentions)
        return out if return_dict else out.to_tuple()


class TxkitDecoder(_TxkitStack):
    def __init__(self, config: TxkitConfig, embed_tokens: nn.Embedding):
        super().__init__(config, embed_tokens, config.decoder_layers)
        self.layers = nn.ModuleList([TxkitDecoderLayer(config, i) for i in range(config.decoder_layers)])

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, T)
        encoder_hidden_states: torch.Tensor | None = None,  # (B, S, D)
        encoder_attention_mask: torch.Tensor | None = None,  # (B, S)
        past_key_values: EncoderDecoderCache | None = None,
        inputs_embeds: torch.Tensor | None = None,  # (B, T, D), instead of input_ids
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = False,
        cache: EncoderDecoderCache | None = None,  # the name transformers >= 5.24 uses for past_key_values
        **kwargs,
    ) -> torch.Tensor | BaseModelOutputWithPastAndCrossAttentions:
        """The decoder's output (B, T, D); with `return_dict=True` a transformers output with the cache, hidden
        states and attentions. (txkit's search calls it step by step and wants the bare tensor.)"""
        past_key_values = cache if cache is not None else past_key_values
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        x = self.embed(input_ids, offset=past, inputs_embeds=inputs_embeds)  # (B, T, D)
        steps = x.size(1)
        # Causal mask. No padding mask on the target side: padding only ever follows the real tokens,
        # so causality already keeps it out of every real position.
        self_mask, is_causal = None, False
        if steps > 1 and past == 0:
            is_causal = True
        elif steps > 1:  # several new tokens on top of a cache: position i sees the past and new tokens <= i
            self_mask = torch.ones(steps, past + steps, dtype=torch.bool, device=x.device).tril(diagonal=past)
        enc_mask = None if encoder_attention_mask is None else encoder_attention_mask.bool()[:, None, None, :]
        states = () if output_hidden_states else None  # each layer's input, then the stack's output
        self_attentions = () if output_attentions else None
        cross_attentions = () if output_attentions else None
        for layer in self.layers:
            if output_hidden_states:
                states += (x,)
            x, self_weights, cross_weights = layer(
                x, self_mask, is_causal, encoder_hidden_states, enc_mask, past_key_values, output_attentions
            )
            if output_attentions:
                self_attentions += (self_weights,)
                cross_attentions += (cross_weights,)
        x = self.finish(x)
        if not return_dict:
            return x
        if output_hidden_states:
            states += (x,)
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=x,
            hidden_states=states,
            attentions=self_attentions,
            cross_attentions=cross_attentions,
            **{CACHE_FIELD: past_key_values},
        )


class TxkitModel(TxkitPreTrainedModel):
    """Encoder and decoder with their embeddings (no output projection)."""

    def __init__(self, config: TxkitConfig):
        super().__init__(config)
        pad = config.pad_token_id
        if config.shared_vocab:
            # One matrix for source embeddings, target embeddings and (in the LM head) the output projection.
            # Three modules whose weights transformers ties (`_tied_weights_keys`), as for its own models, so that
            # `from_pretrained` reports a checkpoint that lacks the matrix as missing. The two tied ones get no
            # initialisation of their own (`_weight`, `_tied`): a model built from a seed has the same weights as
            # when the three were one module.
            self.shared = nn.Embedding(config.vocab_size, config.d_model, padding_idx=pad)
            if config.tie_word_embeddings:
                src_embed, tgt_embed = (
                    nn.Embedding(config.vocab_size, config.d_model, pad, _weight=torch.empty_like(self.shared.weight))
                    for _ in range(2)
                )
                src_embed._tied = tgt_embed._tied = True
                self._tied_weights_keys = {
                    "encoder.embed_tokens.weight": "shared.weight",
                    "decoder.embed_tokens.weight": "shared.weight",
                }
            else:  # transformers ties nothing then (as for its Marian): three matrices of their own
                src_embed = nn.Embedding(config.vocab_size, config.d_model, padding_idx=pad)
                tgt_embed = nn.Embedding(config.vocab_size, config.d_model, padding_idx=pad)
        else:
            src_embed = nn.Embedding(config.vocab_size, config.d_model, padding_idx=pad)
            tgt_embed = nn.Embedding(config.tgt_vocab_size, config.d_model, padding_idx=pad)
        self.encoder = TxkitEncoder(config, src_embed)
        self.decoder = TxkitDecoder(config, tgt_embed)
        self.post_init()

    def get_input_embeddings(self):
        return self.encoder.embed_tokens

    def set_input_embeddings(self, value):
        self.encoder.embed_tokens = value
        if self.config.shared_vocab:
            self.shared = self.decoder.embed_tokens = value

    def get_encoder(self, modality: str | None = None):
        return self.encoder if modality is None else super().get_encoder(modality)

    def get_decoder(self):
        return self.decoder

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,  # (B, S)
        attention_mask: torch.Tensor | None = None,  # (B, S), 1 = real token
        decoder_input_ids: torch.LongTensor | None = None,  # (B, T); default: the start token alone
        decoder_attention_mask: torch.Tensor | None = None,  # unused: the decoder needs only its causal mask
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,  # EncoderDecoderCache; `past_key_values` before transformers 5.24
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,  # (B, S, D), instead of input_ids
        decoder_inputs_embeds: torch.Tensor | None = None,  # (B, T, D), instead of decoder_input_ids
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> Seq2SeqModelOutput | tuple:
        output_attentions, output_hidden_states, return_dict = self._flags(
            output_attentions, output_hidden_states, return_dict
        )
        cache = _cache_argument(cache, past_key_values)
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids, attention_mask, inputs_embeds=inputs_embeds,
                output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            )  # fmt: skip
        elif not isinstance(encoder_outputs, BaseModelOutput):  # a tuple (last hidden state, states, attentions)
            encoder_outputs = BaseModelOutput(*encoder_outputs)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if not use_cache:
            cache = None
        elif cache is None and not self.training:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            batch = encoder_outputs.last_hidden_state.size(0)
            decoder_input_ids = torch.full((batch, 1), self.config.decoder_start_token_id, device=self.device)
        decoder_outputs = self.decoder(
            decoder_input_ids, encoder_outputs.last_hidden_state, attention_mask, past_key_values=cache,
            inputs_embeds=decoder_inputs_embeds, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True,
        )  # fmt: skip
        out = Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,  # (B, T, D)
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
            **{CACHE_FIELD: cache},
        )
        return out if return_dict else out.to_tuple()


class TxkitForConditionalGeneration(TxkitPreTrainedModel, GenerationMixin):
    """The Transformer with its (tied) output projection, the label-smoothed loss and `generate`.

    The padding token is the decoder's start token; its embedding row is zero and stays zero: its
    gradient is masked in the embedding lookup (`padding_idx`) and, through the tied output projection,
    by fixing its logit far below the others (no gradient), which also keeps search from ever producing it.
    """

    def __init__(self, config: TxkitConfig):
        super().__init__(config)
        self.model = TxkitModel(config)
        self.lm_head = nn.Linear(config.d_model, config.target_vocab_size, bias=False)
        if config.shared_vocab:
            self._tied_weights_keys = {
                "lm_head.weight": "model.shared.weight",
                "model.encoder.embed_tokens.weight": "model.shared.weight",
                "model.decoder.embed_tokens.weight": "model.shared.weight",
            }
        else:
            self._tied_weights_keys = {"lm_head.weight": "model.decoder.embed_tokens.weight"}
        self.post_init()

    def get_encoder(self, modality: str | None = None):
        return self.model.encoder if modality is None else super().get_encoder(modality)

    def get_decoder(self):
        return self.model.decoder

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def output_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., V) logits, the padding logit `PAD_LOGIT_MARGIN` below the row's smallest."""
        logits = self.lm_head(hidden_states)
        logits[..., self.config.pad_token_id] = logits.detach().amin(dim=-1) - PAD_LOGIT_MARGIN
        return logits

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,  # (B, S)
        attention_mask: torch.Tensor | None = None,  # (B, S), 1 = real token
        decoder_input_ids: torch.LongTensor | None = None,  # (B, T)
        decoder_attention_mask: torch.Tensor | None = None,  # unused: the decoder needs only its causal mask
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,  # EncoderDecoderCache; `past_key_values` before transformers 5.24
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,  # (B, S, D), instead of input_ids
        decoder_inputs_embeds: torch.Tensor | None = None,  # (B, T, D), instead of decoder_input_ids
        labels: torch.LongTensor | None = None,  # (B, T), -100 or padding = ignored
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int = 0,
        num_items_in_batch: int | torch.Tensor | None = None,
        return_logits: bool = True,
        **kwargs,
    ) -> TxkitSeq2SeqLMOutput | tuple:
        """With `labels`, the loss is the label-smoothed cross-entropy summed over target tokens and divided
        by `num_items_in_batch` when given (the step's token count across processes and accumulation
        steps, as the transformers Trainer passes it), else by this batch's target tokens; `nll_loss` is
        the same without smoothing. `return_logits=False` (training) projects only the real target
        positions onto the vocabulary and returns no logits: the projection and softmax over padding are
        skipped and no (B, T, V) tensor is kept."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        outputs = self.model(
            input_ids, attention_mask, decoder_input_ids, encoder_outputs=encoder_outputs,
            cache=_cache_argument(cache, past_key_values), inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True,
        )  # fmt: skip
        hidden = outputs.last_hidden_state  # (B, T, D)
        pad = self.config.pad_token_id
        logits = loss = nll_loss = n_tokens = None
        if labels is not None and not return_logits:
            keep = labels.ne(-100) & labels.ne(pad)
            labels = labels[keep]  # (N,)
            loss, nll_loss, n_tokens = linear_label_smoothed_nll(
                hidden[keep], self.lm_head.weight, labels, self.config.label_smoothing, pad
            )  # real target positions only, fused: no (N, V) logits are kept
        else:
            if logits_to_keep:
                hidden = hidden[:, -logits_to_keep:]
            logits = self.output_logits(hidden)  # (B, T, V)
            if labels is not None:
                loss, nll_loss, n_tokens = label_smoothed_nll(logits, labels, self.config.label_smoothing, pad)
        if loss is not None:
            denominator = num_items_in_batch if num_items_in_batch is not None else n_tokens.clamp(min=1)
            loss, nll_loss = loss / denominator, nll_loss / denominator
        out = TxkitSeq2SeqLMOutput(
            loss=loss,
            nll_loss=nll_loss,
            num_tokens=n_tokens,
            logits=logits,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
        )
        return out if return_dict else out.to_tuple()
