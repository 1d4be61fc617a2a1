"""Export a txkit model as transformers' built-in `MarianMTModel` (no remote code), and on to CTranslate2.

Marian's layout is the paper's post-norm Transformer with sinusoidal positions and one shared
embedding matrix, so a txkit model converts weight for weight, with two re-orderings:

* the d_model basis. Marian's sinusoidal table puts all the sines in the first d/2 columns and all
  the cosines in the last d/2; the paper interleaves them (sin, cos, sin, cos, ...). Permuting the
  residual stream's coordinates consistently in every weight that reads or writes it (embeddings,
  q/k/v and fc1 input columns, out_proj and fc2 output rows and biases, LayerNorm weights and biases)
  turns the paper's table into Marian's and leaves every output unchanged: attention scores are dot
  products of projections, and LayerNorm's mean and variance do not depend on the order.
* the vocabulary. CTranslate2 reads a Marian model the OPUS-MT way: the padding token is the last
  vocabulary entry, it is dropped, and the decoder starts from a zero vector in its place. So <pad>
  moves from id 0 to the last id (every other token moves down by one), in the weights and in the
  tokenizer together.

txkit never predicts <pad> (its logit sits far below the rest of its row: probability exactly 0); the export
keeps that with a -inf `final_logits_bias` entry (CTranslate2 drops the padding row and its bias anyway).
"""

from __future__ import annotations

import json
from pathlib import Path

from txkit.errors import TxkitError

FORMATS = ("marian",)
# Marian's LayerNorms use torch's default epsilon; CTranslate2 uses the same.
MARIAN_LAYER_NORM_EPS = 1e-5
# Activations both transformers' Marian and CTranslate2 implement exactly as txkit does.
MARIAN_ACTIVATIONS = ("relu", "gelu")


# --------------------------------------------------------------------------------------------------
# What the Marian layout can express
# --------------------------------------------------------------------------------------------------


def marian_blockers(config) -> list[str]:
    """The settings of a TxkitConfig that the Marian layout cannot express (empty when it can).

    Marian is post-norm without a final LayerNorm per stack, with one embedding matrix shared by
    encoder, decoder and output projection (the only layout CTranslate2's Marian converter reads).
    Unscaled embeddings and GELU are expressible (`scale_embedding`, `activation_function`).
    """
    blockers = []
    if config.normalize_before:
        blockers.append("normalize_before=true (pre-norm): Marian layers are post-norm")
    if not config.shared_vocab:
        blockers.append(
            "separate source and target vocabularies (tgt_vocab_size is set): the Marian export needs one "
            "shared vocabulary, the only layout CTranslate2's Marian converter reads"
        )
    if not getattr(config, "tie_word_embeddings", True):
        blockers.append("tie_word_embeddings=false: Marian ties the output projection to the embeddings")
    if config.activation_function not in MARIAN_ACTIVATIONS:
        blockers.append(f"activation_function={config.activation_function!r}")
    if abs(config.layer_norm_eps - MARIAN_LAYER_NORM_EPS) > 1e-12:
        blockers.append(f"layer_norm_eps={config.layer_norm_eps:g}: Marian's LayerNorms use {MARIAN_LAYER_NORM_EPS:g}")
    if config.d_model % 2:
        blockers.append(f"d_model={config.d_model} is odd: the sinusoidal tables differ in their last column")
    if config.decoder_start_token_id != config.pad_token_id:
        blockers.append("decoder_start_token_id differs from pad_token_id: Marian starts the decoder from <pad>")
    return blockers


def check_marian_compatible(config) -> None:
    """Raise a TxkitError naming every setting the Marian layout cannot express."""
    blockers = marian_blockers(config)
    if blockers:
        raise TxkitError("this model cannot be exported to the Marian layout: " + "; ".join(blockers))


# --------------------------------------------------------------------------------------------------
# The two re-orderings
# --------------------------------------------------------------------------------------------------


def marian_feature_order(d_model: int):
    """Index `perm` (d_model,) with marian_vector = paper_vector[perm]: Marian's column k holds the
    paper's column 2k (a sine) for k < d/2 and 2(k - d/2) + 1 (the matching cosine) after that."""
    import torch

    half = d_model // 2
    return torch.cat([torch.arange(0, 2 * half, 2), torch.arange(1, 2 * half, 2)])  # (D,)


def pad_last_order(vocab_size: int, pad_id: int) -> list[int]:
    """new id -> old id: every token keeps its relative order, <pad> becomes the last entry."""
    return [i for i in range(vocab_size) if i != pad_id] + [pad_id]


def marian_state_dict(state: dict, d_model: int, vocab_order: list[int]) -> dict:
    """A txkit state dict, re-expressed with MarianMTModel's names and the two re-orderings.

    Args:
        state: `TxkitForConditionalGeneration.state_dict()` (shared vocabulary).
        vocab_order: new id -> old id (`pad_last_order`).
    """
    import torch

    perm = marian_feature_order(d_model)
    rows = torch.tensor(vocab_order)
    out: dict = {}
    for name, tensor in state.items():
        if name.startswith("lm_head.") or name.endswith("embed_tokens.weight"):
            continue  # tied to model.shared
        marian_name = name.replace(".ffn.fc1.", ".fc1.").replace(".ffn.fc2.", ".fc2.")
        leaf = name.rsplit(".", 2)[-2:]  # e.g. ["q_proj", "weight"]
        if name == "model.shared.weight":
            value = tensor[rows][:, perm]  # (V, D): new vocabulary order, Marian's features
        elif leaf[0] in ("q_proj", "k_proj", "v_proj", "fc1"):
            # they read the residual stream: permute input columns, outputs stay as they are
            value = tensor[:, perm] if leaf[1] == "weight" else tensor
        elif leaf[0] in ("out_proj", "fc2"):
            value = tensor[perm]  # they write it: permute output rows (weight) and the bias
        elif "layer_norm" in leaf[0]:
            value = tensor[perm]
        else:
            raise TxkitError(f"unexpected weight {name} in the model; the Marian export does not know it")
        out[marian_name] = value.contiguous()
    out["lm_head.weight"] = out["model.encoder.embed_tokens.weight"] = out["model.decoder.embed_tokens.weight"] = out[
        "model.shared.weight"
    ]
    return out


def reorder_tokenizer_json(spec: dict, vocab_order: list[int]) -> dict:
    """The `tokenizers` JSON of a tokenizer with its ids renumbered (new id -> old id = vocab_order).

    Tokens keep their strings, so BPE merges, byte fallback and the pre-/post-processing are
    untouched; only the places that store ids change: the model's vocabulary, added tokens, the
    post-processor's special tokens and the padding settings.
    """
    new_id = {old: new for new, old in enumerate(vocab_order)}
    spec = json.loads(json.dumps(spec))  # deep copy
    model = spec["model"]
    if model["type"] == "Unigram":  # the vocabulary is a list of [piece, score]: position = id
        model["vocab"] = [model["vocab"][old] for old in vocab_order]
        if model.get("unk_id") is not None:
            model["unk_id"] = new_id[model["unk_id"]]
    elif isinstance(model.get("vocab"), dict):  # BPE, WordPiece, WordLevel: token -> id
        model["vocab"] = {token: new_id[i] for token, i in model["vocab"].items()}
    else:
        raise TxkitError(f"cannot renumber a {model['type']} tokenizer for the Marian export")
    for token in spec.get("added_tokens") or []:
        token["id"] = new_id[token["id"]]

    def fix_processor(proc):
        if not proc:
            return
        for special in (proc.get("special_tokens") or {}).values():
            special["ids"] = [new_id[i] for i in special["ids"]]
        for child in proc.get("processors") or []:
            fix_processor(child)

    fix_processor(spec.get("post_processor"))
    if spec.get("padding") and "pad_id" in spec["padding"]:
        spec["padding"]["pad_id"] = new_id[spec["padding"]["pad_id"]]
    return spec


# --------------------------------------------------------------------------------------------------
# The export
# --------------------------------------------------------------------------------------------------


def marian_config(config, vocab_order: list[int]):
    """The MarianConfig of a (compatible) TxkitConfig, with the special ids after the re-ordering."""
    from transformers import MarianConfig

    new_id = {old: new for new, old in enumerate(vocab_order)}
    pad = new_id[config.pad_token_id]
    return MarianConfig(
        vocab_size=config.vocab_size,
        decoder_vocab_size=config.vocab_size,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        d_model=config.d_model,
        encoder_layers=config.encoder_layers,
        decoder_layers=config.decoder_layers,
        encoder_attention_heads=config.attention_heads,
        decoder_attention_heads=config.attention_heads,
        encoder_ffn_dim=config.ffn_dim,
        decoder_ffn_dim=config.ffn_dim,
        activation_function=config.activation_function,
        dropout=config.dropout,
        attention_dropout=config.attention_dropout,
        activation_dropout=config.activation_dropout,
        scale_embedding=config.scale_embedding,
        max_position_embeddings=config.max_position_embeddings,
        init_std=config.init_std,
        pad_token_id=pad,
        decoder_start_token_id=pad,
        eos_token_id=new_id[config.eos_token_id],
        bos_token_id=new_id[config.bos_token_id],
        forced_eos_token_id=None,
        architectures=["MarianMTModel"],
    )


def _marian_generation_config(model_path: str, marian_cfg, vocab_order: list[int]):
    """txkit's generation defaults (beam size, length penalty, ...) with the ids renumbered."""
    from transformers import GenerationConfig

    try:
        gen = GenerationConfig.from_pretrained(model_path)
    except OSError:  # a folder without generation_config.json
        gen = GenerationConfig()
    gen.pad_token_id = gen.decoder_start_token_id = marian_cfg.pad_token_id
    gen.eos_token_id = marian_cfg.eos_token_id
    gen.bos_token_id = marian_cfg.bos_token_id
    gen.forced_eos_token_id = None
    return gen


def _reordered_tokenizer(tok, vocab_order: list[int]):
    """A PreTrainedTokenizerFast equal to `tok` except for the ids (checked token by token)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = reorder_tokenizer_json(json.loads(tok.backend_tokenizer.to_str()), vocab_order)
    backend = Tokenizer.from_str(json.dumps(spec))
    for new, old in enumerate(vocab_order):
        if backend.id_to_token(new) != tok.convert_ids_to_tokens(old):
            raise TxkitError(f"tokenizer renumbering failed at id {old} ({tok.convert_ids_to_tokens(old)!r})")
    specials = {k: v for k, v in tok.special_tokens_map.items() if isinstance(v, str)}
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=tok.model_max_length, **specials)


def export_marian(model: str | Path, out_dir: str | Path, *, overwrite: bool = False, verify: bool = True) -> Path:
    """Write `model` (a model folder, run directory or Hub id) as a MarianMTModel folder in `out_dir`.

    The folder loads with `AutoModelForSeq2SeqLM.from_pretrained(out_dir)` without remote code, holds
    the renumbered tokenizer, and converts with `ct2-transformers-converter`. With `verify`, the logits
    of both models on a short input are compared before anything is written.
    Raises TxkitError for settings the layout cannot express (see `marian_blockers`).
    """
    import torch
    from transformers import AutoTokenizer, MarianMTModel

    from txkit.modeling import TxkitConfig, TxkitForConditionalGeneration
    from txkit.runs import resolve_model

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise TxkitError(f"{out_dir}: output folder exists and is not empty (pass --overwrite to replace it)")
    path = resolve_model(model)
    if Path(path).is_dir():
        from txkit import atomic
        from txkit.modelfiles import check_model_folder

        atomic.check_output_dir(out_dir, "--out", [("MODEL", path)])
        check_model_folder(path)
    try:
        config_dict, _ = TxkitConfig.get_config_dict(path)
    except (OSError, ValueError) as exc:
        raise TxkitError(f"{path}: cannot read the model config ({str(exc).strip().splitlines()[0]})") from None
    if config_dict.get("model_type") != TxkitConfig.model_type:
        raise TxkitError(f"{path}: not a txkit model (model_type {config_dict.get('model_type')!r})")
    check_marian_compatible(TxkitConfig.from_dict(config_dict))  # before loading any weights
    txkit_model = TxkitForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    config = txkit_model.config
    shared = txkit_model.model.shared.weight
    if not torch.equal(txkit_model.lm_head.weight, shared):
        raise TxkitError(f"{path}: the output projection is not tied to the embeddings; Marian needs them tied")
    if shared[config.pad_token_id].abs().max() != 0:
        raise TxkitError(
            f"{path}: the <pad> embedding row is not zero; CTranslate2 starts the decoder from a zero vector"
        )
    tok = AutoTokenizer.from_pretrained(path)
    if len(tok) != config.vocab_size:
        raise TxkitError(f"{path}: the tokenizer has {len(tok)} tokens but the model {config.vocab_size}")
    if tok.pad_token_id != config.pad_token_id:
        raise TxkitError(f"{path}: tokenizer and model disagree on the <pad> id")

    order = pad_last_order(config.vocab_size, config.pad_token_id)
    marian_cfg = marian_config(config, order)
    marian = MarianMTModel(marian_cfg).eval()
    state = marian_state_dict(txkit_model.state_dict(), config.d_model, order)
    bias = torch.zeros(1, config.vocab_size)
    bias[0, marian_cfg.pad_token_id] = float("-inf")  # txkit never predicts <pad>
    state["final_logits_bias"] = bias
    missing, unexpected = marian.load_state_dict(state, strict=False)
    missing = [k for k in missing if "embed_positions" not in k]  # Marian computes its own tables
    if missing or unexpected:
        raise TxkitError(f"Marian export: weights missing {missing}, unexpected {unexpected}")
    if verify:
        _check_same_logits(txkit_model, marian, order)

    new_tok = _reordered_tokenizer(tok, order)
    generation_config = _marian_generation_config(path, marian_cfg, order)

    def write(folder: Path) -> None:
        marian.save_pretrained(folder)
        generation_config.save_pretrained(folder)
        new_tok.save_pretrained(folder)

    _write_folder(out_dir, write)
    return out_dir


def _write_folder(out_dir: Path, write) -> None:
    """Run `write(folder)` on a temporary folder next to `out_dir`, then swap it in: a failed export
    leaves nothing half-written, and an existing `out_dir` is replaced only by a complete one."""
    from txkit import atomic

    with atomic.building_dir(out_dir) as tmp:
        write(tmp)


def _check_same_logits(txkit_model, marian, vocab_order: list[int], tolerance: float = 1e-4) -> None:
    """Both models on a short pseudo-random input must give the same logits for every token but <pad>, up to
    fp32 rounding relative to the logits' size, and <pad> probability 0 in both (txkit's <pad> logit sits far
    below its row, the export's is -inf). Guards the mapping against bugs."""
    import torch

    config = txkit_model.config
    gen = torch.Generator().manual_seed(0)
    src = torch.randint(4, config.vocab_size, (2, 7), generator=gen)
    src[:, -1] = config.eos_token_id
    tgt = torch.randint(4, config.vocab_size, (2, 5), generator=gen)
    tgt[:, 0] = config.decoder_start_token_id
    new_id = torch.empty(len(vocab_order), dtype=torch.long)
    new_id[torch.tensor(vocab_order)] = torch.arange(len(vocab_order))
    with torch.no_grad():
        ref = txkit_model(input_ids=src, decoder_input_ids=tgt, use_cache=False).logits[..., vocab_order]
        got = marian(input_ids=new_id[src], decoder_input_ids=new_id[tgt], use_cache=False).logits
    if not same_logits_but_pad(ref, got, tolerance):
        raise TxkitError("Marian export: the exported model's logits differ from the txkit model's (a bug)")


def same_logits_but_pad(ref, got, tolerance: float = 1e-4) -> bool:
    """(..., V) logits in Marian's order (<pad> last): equal up to `tolerance` relative to their size for every
    token but <pad>, and <pad> has probability 0 in both."""
    import torch

    ref_real, got_real = ref[..., :-1], got[..., :-1]
    if not (torch.isfinite(ref_real).all() and torch.isfinite(got_real).all()):
        return False
    scale = max(1.0, ref_real.abs().max().item())
    close = (ref_real - got_real).abs().max().item() <= tolerance * scale
    never_pad = bool(ref.float().softmax(-1)[..., -1].eq(0).all() and got.float().softmax(-1)[..., -1].eq(0).all())
    return close and never_pad


def convert_ctranslate2(
    marian_dir: str | Path, ct2_dir: str | Path, *, quantization: str | None = None, overwrite: bool = False
) -> Path:
    """Convert an exported Marian folder with CTranslate2's own converter (what `ct2-transformers-converter`
    runs); `quantization` e.g. "int8". Needs the `ctranslate2` package."""
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError as exc:
        raise TxkitError("converting to CTranslate2 needs the ctranslate2 package: pip install ctranslate2") from exc
    ct2_dir = Path(ct2_dir)
    if ct2_dir.exists() and any(ct2_dir.iterdir()) and not overwrite:
        raise TxkitError(f"{ct2_dir}: output folder exists and is not empty (pass --overwrite to replace it)")
    converter = TransformersConverter(str(marian_dir))
    _write_folder(ct2_dir, lambda folder: converter.convert(str(folder), quantization=quantization, force=True))
    return ct2_dir
