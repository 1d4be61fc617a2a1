"""Checkpoint averaging, as the paper does for its final models (last 5 checkpoints for base, last 20 for big).

The average of checkpoints is a standard model folder: the averaged weights in `model.safetensors`, and
the config, generation config, tokenizer and modeling code of the newest checkpoint. Works on the
safetensors files directly (no model is built), accumulating in float64 so that averaging N copies of
one checkpoint gives it back bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Sequence

from txkit import atomic, runs
from txkit.errors import TxkitError

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
# Files that belong to training, not to the model: never copied into the average.
_NOT_COPIED = {runs.TRAINING_STATE, WEIGHTS, WEIGHTS_INDEX, "pytorch_model.bin", "averaging.json"}


def last_checkpoints(run_dir: str | os.PathLike, n: int, strict: bool = True) -> list[Path]:
    """The last `n` complete checkpoints of a run, oldest first.

    With `strict`, fewer than `n` is an error; otherwise all there are are returned.
    """
    if n < 1:
        raise TxkitError(f"--last must be at least 1, not {n}")
    if not Path(run_dir).is_dir():
        raise TxkitError(f"{run_dir}: no such run directory")
    found = runs.list_checkpoints(run_dir)
    if not found:
        raise TxkitError(f"{run_dir}: no complete checkpoint in {Path(run_dir) / runs.CHECKPOINTS}")
    if strict and len(found) < n:
        raise TxkitError(f"{run_dir}: asked for the last {n} checkpoints but the run has only {len(found)}")
    return found[-n:]


def _weight_files(folder: Path) -> list[Path]:
    index = folder / WEIGHTS_INDEX
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / s for s in shards]
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    raise TxkitError(f"{folder}: no {WEIGHTS} (is it a model folder or checkpoint?)")


def load_weights(folder: str | os.PathLike) -> dict:
    """Every tensor of a model folder's safetensors file(s), by name."""
    from safetensors.torch import load_file

    tensors = {}
    for f in _weight_files(Path(folder)):
        tensors.update(load_file(str(f)))
    return tensors


def average_weights(folders: Sequence[str | os.PathLike]) -> dict:
    """The element-wise mean of the floating-point tensors of `folders` (float64 accumulation, cast back to
    each tensor's dtype); integer tensors, if any, are taken from the last folder."""
    import torch

    if not folders:
        raise TxkitError("no checkpoints to average")
    first = load_weights(folders[0])
    sums = {k: v.to(torch.float64) if v.is_floating_point() else v for k, v in first.items()}
    for folder in folders[1:]:
        tensors = load_weights(folder)
        if tensors.keys() != sums.keys():
            missing = sorted(set(sums) ^ set(tensors))[:3]
            raise TxkitError(f"{folder}: its weights differ from {folders[0]}'s (e.g. {', '.join(missing)})")
        for name, tensor in tensors.items():
            if tensor.shape != sums[name].shape:
                raise TxkitError(
                    f"{folder}: {name} has shape {tuple(tensor.shape)}, "
                    f"not {tuple(sums[name].shape)} as in {folders[0]}"
                )
            if tensor.is_floating_point():
                sums[name] += tensor.to(torch.float64)
            else:
                sums[name] = tensor
    return {
        name: (total / len(folders)).to(first[name].dtype) if first[name].is_floating_point() else total
        for name, total in sums.items()
    }


def write_model_dir(out_dir: str | os.PathLike, tensors: dict, template: str | os.PathLike, note: dict | None = None):
    """Write a model folder: `tensors` as model.safetensors, every other file (config, generation config,
    tokenizer, code) copied from `template`. Built under a temporary name and swapped in when complete
    (`txkit.atomic`); an existing model folder at `out_dir` is replaced only then."""
    from safetensors.torch import save_file

    out_dir, template = Path(out_dir), Path(template)
    if out_dir.exists() and not (runs.is_model_dir(out_dir) or (out_dir.is_dir() and not any(out_dir.iterdir()))):
        raise TxkitError(f"{out_dir}: exists and is not a model folder; refusing to overwrite it")
    with atomic.building_dir(out_dir) as tmp:
        for item in template.iterdir():
            if item.name in _NOT_COPIED or item.name.endswith(".safetensors"):
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS), metadata={"format": "pt"})
        if note is not None:
            (tmp / "averaging.json").write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")
    return out_dir


# config.json keys that may differ between checkpoints of one model (written by the library, not the model)
_CONFIG_KEYS_IGNORED = {"transformers_version", "_name_or_path", "dtype", "torch_dtype"}
_TOKENIZER_FILES = ("tokenizer.json", "target/tokenizer.json")


def check_same_model(paths: Sequence[Path]) -> None:
    """Every checkpoint is complete and has the same configuration and tokenizer(s) as the first: averaging
    weights trained with different vocabularies gives a model that outputs garbage, with no error."""
    from txkit.modelfiles import check_model_folder, read_json

    configs = [check_model_folder(p) for p in paths]
    first = paths[0]
    for path, config in zip(paths[1:], configs[1:]):
        for key in sorted(set(configs[0]) | set(config)):
            if key in _CONFIG_KEYS_IGNORED:
                continue
            if configs[0].get(key) != config.get(key):
                raise TxkitError(
                    f"{path}/config.json: \"{key}\" is {json.dumps(config.get(key))} but "
                    f"{json.dumps(configs[0].get(key))} in {first}; only checkpoints of one model can be averaged"
                )
        for name in _TOKENIZER_FILES:
            a, b = first / name, path / name
            if a.is_file() != b.is_file():
                raise TxkitError(f"{path}: {'has' if b.is_file() else 'lacks'} {name}, unlike {first}")
            if a.is_file() and a.read_bytes() != b.read_bytes() and read_json(a) != read_json(b):
                raise TxkitError(
                    f"{path}/{name} differs from {first}/{name} ({_first_vocab_difference(read_json(a), read_json(b))}); "
                    "checkpoints trained with different tokenizers cannot be averaged"
                )


def _first_vocab_difference(a: dict, b: dict) -> str:
    va = (a.get("model") or {}).get("vocab") if isinstance(a, dict) else None
    vb = (b.get("model") or {}).get("vocab") if isinstance(b, dict) else None
    if isinstance(va, dict) and isinstance(vb, dict):
        ids_a, ids_b = {i: t for t, i in va.items()}, {i: t for t, i in vb.items()}
        for i in sorted(set(ids_a) | set(ids_b)):
            if ids_a.get(i) != ids_b.get(i):
                return f"token {i}: {ids_b.get(i)!r} against {ids_a.get(i)!r}"
    if isinstance(va, list) and isinstance(vb, list):  # unigram: [piece, score] pairs
        for i, (x, y) in enumerate(zip(va, vb)):
            if x != y:
                return f"token {i}: {y[0] if y else y!r} against {x[0] if x else x!r}"
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            return f"its \"{key}\" section differs"
    return "the files differ"


def average_checkpoints(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> Path:
    """Average the weights of the model folders `paths` into the model folder `out_dir`.

    The config, generation config, tokenizer and code come from the newest (last) of `paths`.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise TxkitError("no checkpoints to average")
    for p in paths:
        if not runs.is_model_dir(p):
            raise TxkitError(f"{p}: not a model folder or checkpoint (no config.json)")
    # Before reading any weights: every file complete, all checkpoints of one model, and the output none of them.
    atomic.check_output_dir(out_dir, "--out", [("checkpoint", p) for p in paths])
    check_same_model(paths)
    tensors = average_weights(paths)
    note = {"averaged": [str(p) for p in paths]}
    return write_model_dir(out_dir, tensors, template=paths[-1], note=note)
