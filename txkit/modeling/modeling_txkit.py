"""The Transformer of "Attention Is All You Need" (Vaswani et al., 2017) as a transformers model.

Self-contained: imports only torch, transformers and its sibling configuration file, because
`save_pretrained` copies both files next to every saved model and users load it with
`AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True)` without txkit installed.

Shapes in comments: B batch, S source length, T target length, D d_model, H heads, Dh = D / H,
V vocabulary size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from dataclasses import dataclass

from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

try:  # transformers >= 5: init helpers that skip weights already loaded from a checkpoint
    from transformers import initialization as init
except ImportError:  # pragma: no cover
    init = nn.init

from .configuration_txkit import TxkitConfig

# transformers 5.24 renamed the cache that `generate` hands to `forward` (and the output field that hands it
# back) from `past_key_values` to `cache`. A saved model folder keeps this file for good, so `forward` accepts
# either name and returns the cache under the field name of the installed transformers' output classes.
CACHE_FIELD = "cache" if "cache" in Seq2SeqLMOutput.__dataclass_fields__ else "past_key_values"


def sinusoidal_positions(num_positions: int, d_model: int) -> torch.Tensor:
    """The paper's table: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(same), interleaved."""
    position = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)  # (P, 1)
    inv_freq = torch.pow(10000.0, -torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (D/2,)
    angles = position * inv_freq  # (P, D/2)
    table = torch.zeros(num_positions, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : d_model // 2])
    return table.float()


def label_smoothed_nll(
    logits: torch.Tensor, labels: torch.Tensor, epsilon: float, pad_token_id: int, ignore_index: int = -100
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed label-smoothed cross-entropy over the non-padding targets.

    The smoothed target puts 1 - eps on the reference token and eps spread uniformly over the V - 1
    non-padding tokens: the padding token can never be predicted, so its column is left out of the
    softmax (whether or not its logit is already -inf), which also gives it exactly zero gradient.
    Computed from the log-sum-exp and a gather: no (N, V) log-probability tensor next to the logits.

    Args:
        logits: (..., V) raw or pad-masked logits.
        labels: (...) target ids; `ignore_index` and the padding id are skipped.
    Returns:
        (smoothed loss sum, nll sum, number of target tokens), all scalars.
    """
    vocab = logits.size(-1)
    logits = logits.reshape(-1, vocab)
    labels = labels.reshape(-1)
    keep = labels.ne(ignore_index) & labels.ne(pad_token_id)
    if not keep.all():  # (the training path hands over only kept tokens and skips this copy)
        logits, labels = logits[keep], labels[keep]
    # the V - 1 non-padding columns, as a view where padding is the first or last id
    if pad_token_id == 0:
        logits, labels = logits[:, 1:], labels - 1
    elif pad_token_id == vocab - 1:
        logits = logits[:, :-1]
    else:
        logits = torch.cat([logits[:, :pad_token_id], logits[:, pad_token_id + 1 :]], dim=1)
        labels = labels - labels.gt(pad_token_id).long()
    logits = logits.float()  # (N, V - 1)
    lse = torch.logsumexp(logits, dim=-1)  # (N,)
    nll = lse - logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # -log p(reference)
    if epsilon > 0:
        smooth = lse - logits.mean(-1)  # mean over the non-pad classes of -log p
        loss = (1.0 - epsilon) * nll + epsilon * smooth
    else:
        loss = nll
    return loss.sum(), nll.sum(), keep.sum()


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """`F.dropout`, with its mask drawn by `rand` on CPUs: torch's CPU `bernoulli_` is ~2.6x slower than
    `rand` (4.7 vs 1.8 ms per 0.5M values on 2 cores), which made dropout a fifth of a CPU training step.
    The mask is the same distribution from the same generator; GPUs keep torch's fused kernel."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not 0.0 < p < 1.0:
        return F.dropout(x, p=p, training=True)
    return x * torch.rand_like(x).ge_(p).mul_(1.0 / (1.0 - p))


class _LinearSmoothedNLL(torch.autograd.Function):
    """`label_smoothed_nll(hidden @ weight.T, labels)` for the training path, fused and in row chunks.

    The unfused way keeps an (N, V) fp32 logits tensor and walks it about fifteen times (log-sum-exp, its
    backward, the gather's and the column slice's zero-filled gradients, their sum): on a 2-core CPU a
    third of a transformer-tiny step (benchmarks/RESULTS.md). Here each chunk of rows is projected, its
    log-sum-exp taken, and its logits turned in place into the gradient dL/dlogits = softmax - q (q the
    smoothed target), which goes straight into the gradients of `hidden` and `weight`; no (N, V) tensor
    exists and nothing but those two gradients is kept for backward. Kept libraries that do this
    (Liger-Kernel, cut-cross-entropy) are Triton kernels for GPUs only.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, epsilon, pad_token_id, chunk_rows, dtype):
        # hidden (N, D), weight (V, D), labels (N,) with no padding; dtype: the matmuls' (autocast's) dtype
        vocab = weight.size(0)
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        w = weight.to(dtype)
        # sum over the non-padding columns of the logits = hidden . (sum of the non-padding rows of weight)
        w_sum = (weight.float().sum(0) - weight[pad_token_id].float()) if epsilon > 0 else None
        loss = torch.zeros((), device=hidden.device)
        nll_total = torch.zeros((), device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.size(0), chunk_rows):
                h = hidden[start : start + chunk_rows].to(dtype)  # (n, D)
                y = labels[start : start + chunk_rows].unsqueeze(-1)  # (n, 1)
                logits = (h @ w.T).float()  # (n, V)
                logits[:, pad_token_id] = float("-inf")
                lse = torch.logsumexp(logits, dim=-1)  # (n,)
                nll = lse - logits.gather(1, y).squeeze(-1)
                nll_total += nll.sum()
                if epsilon > 0:
                    mean_logit = (h.float() @ w_sum) / (vocab - 1)
                    loss += ((1.0 - epsilon) * nll + epsilon * (lse - mean_logit)).sum()
                else:
                    loss += nll.sum()
                if want_grad:  # logits -> softmax - q, in place
                    g = logits.sub_(lse.unsqueeze(-1)).exp_()
                    if epsilon > 0:
                        g.sub_(epsilon / (vocab - 1))
                        g[:, pad_token_id] = 0.0
                    g.scatter_add_(1, y, g.new_full(y.shape, epsilon - 1.0))
                    g = g.to(dtype)
                    if grad_hidden is not None:
                        grad_hidden[start : start + chunk_rows] = g @ w
                    if grad_weight is not None:
                        grad_weight += (g.T @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(nll_total)
        return loss, nll_total

    @staticmethod
    def backward(ctx, grad_loss, grad_nll):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_loss.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_loss).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None, None


# Rows per chunk of the fused loss: on CPU ~4M logits (16 MB, cache-sized; measured best for V = 8000 on
# a 2-core machine, benchmarks/RESULTS.md); on GPUs chunks large enough to keep the matmuls efficient.
FUSED_LOSS_CPU_ELEMENTS = 1 << 22
FUSED_LOSS_GPU_ELEMENTS = 1 << 28


def linear_label_smoothed_nll(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, epsilon: float, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`label_smoothed_nll(hidden @ weight.T, labels, ...)` for rows whose labels are all real tokens, fused
    (see `_LinearSmoothedNLL`): (smoothed loss sum, nll sum, number of tokens). The nll sum carries no
    gradient. Under autocast the projection runs in autocast's dtype, as `nn.Linear` would."""
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    elements = FUSED_LOSS_CPU_ELEMENTS if device_type == "cpu" else FUSED_LOSS_GPU_ELEMENTS
    chunk_rows = max(1, elements // weight.size(0))
    loss, nll = _LinearSmoothedNLL.apply(hidden, weight, labels, epsilon, pad_token_id, chunk_rows, dtype)
    return loss, nll, labels.new_tensor(labels.numel())


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
    """Multi-head scaled dot-product attention through torch's fused `scaled_dot_product_attention`."""

    def __init__(self, config: TxkitConfig, layer_idx: int | None = None, is_cross_attention: bool = False):
        super().__init__()
        d = config.d_model
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

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, Tq, D)
        key_value_states: torch.Tensor | None = None,  # (B, S, D) for cross-attention
        attention_mask: torch.Tensor | None = None,  # bool, broadcastable to (B, H, Tq, Tk); True = attend
        is_causal: bool = False,
        past_key_values: Cache | None = None,
    ) -> torch.Tensor:
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
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attention_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal and attention_mask is None,
        )  # (B, H, Tq, Dh)
        out = out.transpose(1, 2).reshape(hidden_states.shape)  # (B, Tq, D)
        return self.out_proj(out)


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


class TxkitEncoderLayer(nn.Module):
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
        if self.normalize_before:
            return x + dropout(fn(norm(x)), self.dropout, self.training)
        return norm(x + dropout(fn(x), self.dropout, self.training))

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        x = self._sublayer(x, self.self_attn_layer_norm, lambda h: self.self_attn(h, attention_mask=attention_mask))
        return self._sublayer(x, self.final_layer_norm, self.ffn)


class TxkitDecoderLayer(TxkitEncoderLayer):
    def __init__(self, config: TxkitConfig, layer_idx: int):
        super().__init__(config)
        self.self_attn = TxkitAttention(config, layer_idx=layer_idx)
        self.encoder_attn = TxkitAttention(config, layer_idx=layer_idx, is_cross_attention=True)
        self.encoder_attn_layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    def forward(self, x, self_mask, is_causal, encoder_hidden_states, encoder_mask, past_key_values=None):
        x = self._sublayer(
            x,
            self.self_attn_layer_norm,
            lambda h: self.self_attn(h, attention_mask=self_mask, is_causal=is_causal, past_key_values=past_key_values),
        )
        x = self._sublayer(
            x,
            self.encoder_attn_layer_norm,
            lambda h: self.encoder_attn(
                h, key_value_states=encoder_hidden_states, attention_mask=encoder_mask, past_key_values=past_key_values
            ),
        )
        return self._sublayer(x, self.final_layer_norm, self.ffn)


class TxkitPreTrainedModel(PreTrainedModel):
    config_class = TxkitConfig
    config: TxkitConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _supports_sdpa = True
    _no_split_modules = ["TxkitEncoderLayer", "TxkitDecoderLayer"]

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            if not getattr(module.weight, "_is_hf_initialized", False):
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

    def embed(self, input_ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        length = input_ids.size(1)
        if offset + length > self.max_positions:
            raise ValueError(
                f"sequence of {offset + length} tokens is longer than max_position_embeddings={self.max_positions}"
            )
        x = self.embed_tokens(input_ids) * self.embed_scale  # (B, L, D)
        x = x + self.positions[offset : offset + length].to(x.dtype)
        return dropout(x, self.dropout, self.training)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(x) if self.layer_norm is not None else x


class TxkitEncoder(_TxkitStack):
    def __init__(self, config: TxkitConfig, embed_tokens: nn.Embedding):
        super().__init__(config, embed_tokens, config.encoder_layers)
        self.layers = nn.ModuleList([TxkitEncoderLayer(config) for _ in range(config.encoder_layers)])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> BaseModelOutput:
        x = self.embed(input_ids)  # (B, S, D)
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        for layer in self.layers:
            x = layer(x, mask)
        return BaseModelOutput(last_hidden_state=self.finish(x))


class TxkitDecoder(_TxkitStack):
    def __init__(self, config: TxkitConfig, embed_tokens: nn.Embedding):
        super().__init__(config, embed_tokens, config.decoder_layers)
        self.layers = nn.ModuleList([TxkitDecoderLayer(config, i) for i in range(config.decoder_layers)])

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        encoder_hidden_states: torch.Tensor,  # (B, S, D)
        encoder_attention_mask: torch.Tensor | None = None,  # (B, S)
        past_key_values: EncoderDecoderCache | None = None,
    ) -> torch.Tensor:
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        x = self.embed(input_ids, offset=past)  # (B, T, D)
        steps = input_ids.size(1)
        # Causal mask. No padding mask on the target side: padding only ever follows the real tokens,
        # so causality already keeps it out of every real position.
        self_mask, is_causal = None, False
        if steps > 1 and past == 0:
            is_causal = True
        elif steps > 1:  # several new tokens on top of a cache: position i sees the past and new tokens <= i
            self_mask = torch.ones(steps, past + steps, dtype=torch.bool, device=x.device).tril(diagonal=past)
        enc_mask = None if encoder_attention_mask is None else encoder_attention_mask.bool()[:, None, None, :]
        for layer in self.layers:
            x = layer(x, self_mask, is_causal, encoder_hidden_states, enc_mask, past_key_values)
        return self.finish(x)


class TxkitModel(TxkitPreTrainedModel):
    """Encoder and decoder with their embeddings (no output projection)."""

    def __init__(self, config: TxkitConfig):
        super().__init__(config)
        pad = config.pad_token_id
        if config.shared_vocab:
            # one matrix for source embeddings, target embeddings and (in the LM head) the output projection
            self.shared = nn.Embedding(config.vocab_size, config.d_model, padding_idx=pad)
            src_embed = tgt_embed = self.shared
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

    def get_encoder(self):
        return self.encoder

    def get_decoder(self):
        return self.decoder


class TxkitForConditionalGeneration(TxkitPreTrainedModel, GenerationMixin):
    """The Transformer with its (tied) output projection, the label-smoothed loss and `generate`.

    The padding token is the decoder's start token; its embedding row is zero and stays zero: its
    gradient is masked in the embedding lookup (`padding_idx`) and, through the tied output projection,
    by setting its logit to -inf, which also keeps search from ever producing it.
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

    def get_encoder(self):
        return self.model.encoder

    def get_decoder(self):
        return self.model.decoder

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def output_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., V) logits with the padding logit at -inf."""
        logits = self.lm_head(hidden_states)
        logits[..., self.config.pad_token_id] = float("-inf")
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
        labels: torch.LongTensor | None = None,  # (B, T), -100 or padding = ignored
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        num_items_in_batch: int | torch.Tensor | None = None,
        return_logits: bool = True,
        return_dict: bool | None = None,
        **kwargs,
    ) -> TxkitSeq2SeqLMOutput:
        """With `labels`, the loss is the label-smoothed cross-entropy summed over target tokens and divided
        by `num_items_in_batch` when given (the step's token count across processes and accumulation
        steps, as the transformers Trainer passes it), else by this batch's target tokens; `nll_loss` is
        the same without smoothing. `return_logits=False` (training) projects only the real target
        positions onto the vocabulary and returns no logits: the projection and softmax over padding are
        skipped and no (B, T, V) tensor is kept."""
        past_key_values = cache if cache is not None else past_key_values
        if encoder_outputs is None:
            encoder_outputs = self.model.encoder(input_ids, attention_mask)
        elif isinstance(encoder_outputs, (tuple, list)):
            encoder_outputs = BaseModelOutput(last_hidden_state=encoder_outputs[0])
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None and not self.training:
            past_key_values = EncoderDecoderCache(DynamicCache(), DynamicCache())
        if not use_cache:
            past_key_values = None
        if decoder_input_ids is None:
            start = self.config.decoder_start_token_id
            decoder_input_ids = torch.full((encoder_outputs.last_hidden_state.size(0), 1), start, device=self.device)

        hidden = self.model.decoder(
            decoder_input_ids,
            encoder_outputs.last_hidden_state,
            attention_mask,
            past_key_values=past_key_values,
        )  # (B, T, D)
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
        return TxkitSeq2SeqLMOutput(
            loss=loss,
            nll_loss=nll_loss,
            num_tokens=n_tokens,
            logits=logits,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            **{CACHE_FIELD: past_key_values},
        )
