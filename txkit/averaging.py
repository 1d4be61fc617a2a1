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

from txkit import runs
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
    tokenizer, code) copied from `template`. Written under a temporary name and renamed when complete;
    an existing model folder at `out_dir` is replaced only then."""
    from safetensors.torch import save_file

    out_dir, template = Path(out_dir), Path(template)
    if out_dir.exists() and not (runs.is_model_dir(out_dir) or (out_dir.is_dir() and not any(out_dir.iterdir()))):
        raise TxkitError(f"{out_dir}: exists and is not a model folder; refusing to overwrite it")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    except OSError as exc:
        raise TxkitError(f"cannot write {out_dir}: {exc.strerror}") from None
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
    replace_dir(tmp, out_dir)
    return out_dir


def replace_dir(tmp: Path, final: Path) -> None:
    """Put the complete folder `tmp` at `final`. `os.replace` cannot replace a non-empty folder, so an old
    `final` is first moved aside to `final.old` and deleted after the swap; `recover_dir` undoes a crash
    between the two renames."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def recover_dir(final: Path) -> None:
    """After a crash inside `replace_dir`: bring `final.old` back if `final` is missing."""
    old = final.with_name(final.name + ".old")
    if old.exists() and not final.exists():
        os.replace(old, final)


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
    tensors = average_weights(paths)
    note = {"averaged": [str(p) for p in paths]}
    return write_model_dir(out_dir, tensors, template=paths[-1], note=note)
