"""TxkitConfig: every architecture hyperparameter of the Transformer, and the paper's presets.

Self-contained: imports only transformers (this file is copied next to every saved model).
"""

from __future__ import annotations

from transformers import PretrainedConfig

# Table 3 of the paper ("base", "big"); "tiny" is the 4+4-layer d_model 128 model people train on
# Multi30k, "small" a CPU-sized model for quick experiments.
PRESETS: dict[str, dict] = {
    "transformer-base": dict(
        d_model=512, encoder_layers=6, decoder_layers=6, attention_heads=8, ffn_dim=2048, dropout=0.1
    ),
    "transformer-big": dict(
        d_model=1024, encoder_layers=6, decoder_layers=6, attention_heads=16, ffn_dim=4096, dropout=0.3
    ),
    "transformer-small": dict(
        d_model=256, encoder_layers=3, decoder_layers=3, attention_heads=4, ffn_dim=1024, dropout=0.1
    ),
    "transformer-tiny": dict(
        d_model=128, encoder_layers=4, decoder_layers=4, attention_heads=4, ffn_dim=512, dropout=0.3
    ),
}


class TxkitConfig(PretrainedConfig):
    r"""Configuration of [`TxkitForConditionalGeneration`]; the defaults are the paper's base model.

    Args:
        vocab_size: source vocabulary size (the shared vocabulary when `tgt_vocab_size` is None).
        tgt_vocab_size: target vocabulary size for separate vocabularies; None shares one vocabulary
            and one matrix between encoder embeddings, decoder embeddings and output projection.
        d_model: model width (d_model); heads have size d_model / attention_heads.
        encoder_layers / decoder_layers: number of layers of each stack (N).
        attention_heads: heads per attention layer (h).
        ffn_dim: inner size of the position-wise feed-forward network (d_ff).
        activation_function: "relu" (the paper) or "gelu".
        dropout: P_drop on every sub-layer output and on embeddings + positions.
        attention_dropout: dropout on the attention probabilities (0 in the paper).
        activation_dropout: dropout after the feed-forward activation (0 in the paper).
        normalize_before: pre-norm residual blocks with a final LayerNorm per stack
            (False = the paper's post-norm).
        scale_embedding: multiply embeddings by sqrt(d_model), as the paper does.
        max_position_embeddings: longest sequence the sinusoidal table covers.
        label_smoothing: eps_ls of the training loss.
        layer_norm_eps: epsilon of every LayerNorm.
        init_std: standard deviation of the normal initialisation of embeddings.
    """

    model_type = "txkit"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "attention_heads",
        "num_hidden_layers": "encoder_layers",
        "encoder_attention_heads": "attention_heads",
        "decoder_attention_heads": "attention_heads",
        "encoder_ffn_dim": "ffn_dim",
        "decoder_ffn_dim": "ffn_dim",
    }

    def __init__(
        self,
        vocab_size: int = 37000,
        tgt_vocab_size: int | None = None,
        d_model: int = 512,
        encoder_layers: int = 6,
        decoder_layers: int = 6,
        attention_heads: int = 8,
        ffn_dim: int = 2048,
        activation_function: str = "relu",
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        normalize_before: bool = False,
        scale_embedding: bool = True,
        max_position_embeddings: int = 1024,
        label_smoothing: float = 0.1,
        layer_norm_eps: float = 1e-5,
        init_std: float | None = None,
        use_cache: bool = True,
        pad_token_id: int = 0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        unk_token_id: int = 3,
        decoder_start_token_id: int | None = None,
        is_encoder_decoder: bool = True,
        tie_word_embeddings: bool = True,
        **kwargs,
    ):
        if d_model % attention_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by attention_heads ({attention_heads})")
        if activation_function not in ("relu", "gelu"):
            raise ValueError(f"activation_function must be 'relu' or 'gelu', not {activation_function!r}")
        self.vocab_size = vocab_size
        self.tgt_vocab_size = tgt_vocab_size
        self.d_model = d_model
        self.encoder_layers = encoder_layers
        self.decoder_layers = decoder_layers
        self.attention_heads = attention_heads
        self.ffn_dim = ffn_dim
        self.activation_function = activation_function
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.normalize_before = normalize_before
        self.scale_embedding = scale_embedding
        self.max_position_embeddings = max_position_embeddings
        self.label_smoothing = label_smoothing
        self.layer_norm_eps = layer_norm_eps
        # Embeddings are scaled by sqrt(d_model), so initialise them at d_model^-0.5 (as fairseq does)
        # to give the embedding+position sum a unit scale.
        self.init_std = init_std if init_std is not None else d_model**-0.5
        self.use_cache = use_cache
        self.unk_token_id = unk_token_id
        # The decoder starts from the padding token (Marian / OPUS-MT convention: a zero vector).
        if decoder_start_token_id is None:
            decoder_start_token_id = pad_token_id
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            decoder_start_token_id=decoder_start_token_id,
            is_encoder_decoder=is_encoder_decoder,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @property
    def shared_vocab(self) -> bool:
        """True when source and target share one vocabulary (and one embedding matrix)."""
        return self.tgt_vocab_size is None

    @property
    def target_vocab_size(self) -> int:
        return self.vocab_size if self.tgt_vocab_size is None else self.tgt_vocab_size

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "TxkitConfig":
        """A named preset (`transformer-base`, `transformer-big`, `transformer-small`, `transformer-tiny`)
        with any field overridden, e.g. `from_preset("transformer-base", vocab_size=32000)`."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})
