"""Checks of the files a model folder or checkpoint is made of, before anything expensive reads them.

torch, safetensors, tokenizers and transformers meet a truncated or hand-edited file with a traceback that
does not name it (or, for a `"d_model": "128"`, with an error deep inside a layer). These checks read only
headers and JSON, so they take milliseconds, and each failure is one line naming the file and what is wrong:

- config.json: valid JSON, a mapping, architecture fields of the right type;
- model.safetensors: the header parses and the file is as long as the header says (a cut copy is not);
  the embedding's shape agrees with config.json's vocab_size and d_model;
- tokenizer.json: valid JSON that `tokenizers` loads, with as many tokens as the config's vocabulary;
- training_state/*: trainer_state.json parses; optimizer.pt, scheduler.pt and rank files are complete
  zip archives (torch's format) whose checksums match.

Light module: no torch import.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

from txkit import runs
from txkit.errors import TxkitError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
_INT_FIELDS = ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "attention_heads", "ffn_dim",
               "max_position_embeddings", "pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id")  # fmt: skip
_FLOAT_FIELDS = ("dropout", "attention_dropout", "activation_dropout", "label_smoothing", "layer_norm_eps")
_BOOL_FIELDS = ("normalize_before", "scale_embedding", "tie_word_embeddings")


def read_json(path: Path, what: str = "JSON") -> object:
    """A JSON file's content, or a TxkitError naming the file, line and problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TxkitError(f"{path}: not UTF-8 text (byte {exc.start}); expected {what}") from None
    except OSError as exc:
        raise TxkitError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        problem = "empty file" if not text.strip() else f"line {exc.lineno}: {exc.msg}"
        raise TxkitError(f"{path}: not valid {what} ({problem}; truncated or edited?)") from None


def check_config(folder: str | os.PathLike) -> dict:
    """config.json of a model folder, with txkit's architecture fields checked for type and sense."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise TxkitError(f"{folder}: no {CONFIG} (not a model folder or checkpoint)")
    config = read_json(path, "JSON")
    if not isinstance(config, dict):
        raise TxkitError(f"{path}: expected a JSON object of settings, found {type(config).__name__}")
    if config.get("model_type", "txkit") != "txkit":
        return config  # another architecture: transformers checks its own config
    for key in _INT_FIELDS:
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TxkitError(f"{path}: \"{key}\" must be an integer, not {json.dumps(value)}")
    for key in ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "attention_heads", "ffn_dim",
                "max_position_embeddings"):  # fmt: skip
        if key in config and config[key] < 1:
            raise TxkitError(f"{path}: \"{key}\" must be positive, not {config[key]}")
    tgt = config.get("tgt_vocab_size")
    if tgt is not None and (isinstance(tgt, bool) or not isinstance(tgt, int) or tgt < 1):
        raise TxkitError(f"{path}: \"tgt_vocab_size\" must be a positive integer or null, not {json.dumps(tgt)}")
    for key in _FLOAT_FIELDS:
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TxkitError(f"{path}: \"{key}\" must be a number, not {json.dumps(value)}")
    for key in _BOOL_FIELDS:
        value = config.get(key)
        if value is not None and not isinstance(value, bool):
            raise TxkitError(f"{path}: \"{key}\" must be true or false, not {json.dumps(value)}")
    if "d_model" in config and "attention_heads" in config and config["d_model"] % config["attention_heads"]:
        raise TxkitError(
            f"{path}: \"d_model\" ({config['d_model']}) must be divisible by \"attention_heads\" "
            f"({config['attention_heads']})"
        )
    return config


def safetensors_header(path: str | os.PathLike) -> dict:
    """The tensor table of a safetensors file ({name: {dtype, shape, data_offsets}}), after checking that
    the file is complete: 8 bytes of header length, the JSON header, then exactly the bytes it describes."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise TxkitError(f"{path}: truncated ({size} bytes; not a safetensors file)")
            (length,) = struct.unpack("<Q", head)
            if length > size - 8 or length > 100_000_000:
                raise TxkitError(f"{path}: truncated or not a safetensors file (header of {length} bytes in a "
                                 f"file of {size})")  # fmt: skip
            raw = fh.read(length)
    except OSError as exc:
        raise TxkitError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TxkitError(f"{path}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise TxkitError(f"{path}: corrupt safetensors header")
    header.pop("__metadata__", None)
    try:
        end = max((int(t["data_offsets"][1]) for t in header.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        raise TxkitError(f"{path}: corrupt safetensors header (a tensor without data_offsets)") from None
    expected = 8 + length + end
    if size != expected:
        state = "truncated" if size < expected else "has trailing bytes"
        raise TxkitError(f"{path}: {state}: {size} bytes, but its header describes {expected}")
    return header


def check_weights(folder: str | os.PathLike, config: dict) -> None:
    """model.safetensors is complete and its embedding matches config.json (vocab_size x d_model)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        table = read_json(index, "JSON")
        files = sorted(set((table.get("weight_map") or {}).values())) if isinstance(table, dict) else []
        headers = {}
        for name in files:
            headers.update(safetensors_header(folder / name))
        where = index
    elif (folder / WEIGHTS).is_file():
        headers = safetensors_header(folder / WEIGHTS)
        where = folder / WEIGHTS
    else:
        raise TxkitError(f"{folder}: no {WEIGHTS} (is it a model folder or checkpoint?)")
    if config.get("model_type", "txkit") != "txkit":
        return
    shared = headers.get("model.shared.weight")
    if shared is None:
        return
    rows, cols = (list(shared.get("shape", [])) + [None, None])[:2]
    if "vocab_size" in config and rows != config["vocab_size"]:
        raise TxkitError(
            f"{folder / CONFIG}: \"vocab_size\" is {config['vocab_size']} but the embedding in {where} has {rows} rows"
        )
    if "d_model" in config and cols != config["d_model"]:
        raise TxkitError(f"{folder / CONFIG}: \"d_model\" is {config['d_model']} but the weights in {where} have {cols}")


def check_tokenizer(folder: str | os.PathLike, vocab_size: int | None = None) -> None:
    """tokenizer.json parses, `tokenizers` accepts it, and it has `vocab_size` tokens (when given)."""
    path = Path(folder) / TOKENIZER
    if not path.is_file():
        raise TxkitError(f"{folder}: no {TOKENIZER} (build one with `txkit tokenizer build`)")
    read_json(path, "tokenizer JSON")
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own Exception type with a serde message
        raise TxkitError(f"{path}: not a tokenizer file ({str(exc).splitlines()[0][:200]})") from None
    if vocab_size is not None and tok.get_vocab_size(with_added_tokens=True) != vocab_size:
        raise TxkitError(
            f"{path}: has {tok.get_vocab_size(with_added_tokens=True)} tokens but the model's vocabulary is "
            f"{vocab_size} (config.json); the tokenizer belongs to another model"
        )


def check_model_folder(folder: str | os.PathLike, tokenizer: bool = True) -> dict:
    """Every check above on a local model folder; returns its config. Hub ids are left to transformers."""
    folder = Path(folder)
    config = check_config(folder)
    check_weights(folder, config)
    if tokenizer and (folder / TOKENIZER).is_file():
        check_tokenizer(folder, config.get("vocab_size"))
        target = folder / "target"
        if (target / TOKENIZER).is_file():
            check_tokenizer(target, config.get("tgt_vocab_size") or config.get("vocab_size"))
    return config


def check_torch_file(path: str | os.PathLike) -> None:
    """A file written by `torch.save` is a complete zip archive whose checksums match."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile:
        raise TxkitError(f"{path}: truncated or corrupt (not a complete torch.save archive)") from None
    except OSError as exc:
        raise TxkitError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if bad is not None:
        raise TxkitError(f"{path}: corrupt (checksum mismatch in {bad})")


def check_training_state(checkpoint: str | os.PathLike) -> dict:
    """A checkpoint's training_state/ is complete and readable; returns trainer_state.json."""
    state_dir = Path(checkpoint) / runs.TRAINING_STATE
    state_file = state_dir / "trainer_state.json"
    if not state_file.is_file():
        raise TxkitError(f"{checkpoint}: not a complete training checkpoint (no {runs.TRAINING_STATE}/trainer_state.json)")
    state = read_json(state_file, "JSON")
    if not isinstance(state, dict) or isinstance(state.get("step"), bool) or not isinstance(state.get("step"), int):
        raise TxkitError(f"{state_file}: \"step\" is missing or not an integer")
    for name in ("optimizer.pt", "scheduler.pt"):
        if not (state_dir / name).is_file():
            raise TxkitError(f"{checkpoint}: {runs.TRAINING_STATE}/{name} is missing")
    for path in sorted(state_dir.glob("*.pt")):
        check_torch_file(path)
    return state


def check_checkpoint(checkpoint: str | os.PathLike) -> None:
    """A checkpoint to resume from: the model folder and the training state, all checked."""
    check_model_folder(checkpoint)
    check_training_state(checkpoint)
    ema = Path(checkpoint) / runs.TRAINING_STATE / runs.EMA_DIR
    if ema.exists():  # the moving average of the weights (train.ema_decay), restored on resume
        check_model_folder(ema)
