"""The layout of a run directory: every file and folder name in it is declared here, and its log is read here.

    RUN_DIR/
      recipe.yaml                 the resolved recipe (every key, after overrides)
      log.jsonl                   every logged value, one JSON object per line (read_log)
      tensorboard/                accelerate's TensorBoard tracker
      tokenizer/                  the recipe's tokenizer when tokenizer.path is relative (the recipe says where)
      checkpoints/
        checkpoint-00001000/      a `save_pretrained` model folder (+ tokenizer, generation config, README.md)
          training_state/         trainer_state.json, optimizer.pt, scheduler.pt, scaler.pt (fp16),
                                  rank-00000.pt ... (RNG states, sampler position): for resuming only
        checkpoint-00002000.tmp/  being written; renamed when complete, never read
      best/                       model folder of the best validation checkpoint (+ val_metrics.json)
      model/                      the shareable final model (averaged), written by `txkit run` (+ README.md,
                                  recipe.yaml, training_info.json)
      training_info.json          steps, tokens, hardware, wall time: what the model card reports
      stages/<stage>.done         `txkit run`'s markers (and train.wall_time)
      translations/<test>.<tgt>   `txkit run`'s test translations
      eval/<test>.json            their scores (<test>.<src>-<tgt>.json: one direction of a multilingual recipe)
      distill/<key>/              the teacher's translations of data.train (distill.teacher), keyed on what
                                  they depend on; distill/<key>.partial/ while the teacher translates
      report.png, report.md       `txkit report`'s curves and summary

Light module: no torch import.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from txkit.errors import TxkitError

CHECKPOINTS = "checkpoints"
TRAINING_STATE = "training_state"
BEST = "best"
FINAL_MODEL = "model"
RECIPE_FILE = "recipe.yaml"
LOG_FILE = "log.jsonl"
TRAINING_INFO = "training_info.json"
STAGES_DIR = "stages"
TRAIN_WALL_TIME = "train.wall_time"  # in STAGES_DIR
TRANSLATIONS_DIR = "translations"
EVAL_DIR = "eval"
DISTILL_DIR = "distill"  # sequence-level distillation: the teacher's translations, RUN/distill/<key>/
REPORT_PNG = "report.png"
REPORT_MARKDOWN = "report.md"
MODEL_CARD = "README.md"  # in model folders
VAL_METRICS = "val_metrics.json"  # in BEST
# in a checkpoint's TRAINING_STATE folder
TRAINER_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.pt"
EMA_DIR = "ema"  # the moving average of the weights (train.ema_decay), a model folder of its own
SCHEDULER_STATE = "scheduler.pt"
SCALER_STATE = "scaler.pt"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_PARTIAL_RE = re.compile(r"^checkpoint-\d+\.tmp$")


def rank_file(rank: int) -> str:
    """A process's RNG and sampler state in a checkpoint's TRAINING_STATE folder."""
    return f"rank-{rank:05d}.pt"


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (folders still being written end in .tmp and are skipped)."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found) if (p / "config.json").exists()]


def is_partial_checkpoint(path: str | Path) -> bool:
    """A checkpoint folder still being written (or cut by a crash): `checkpoint-NNNNNNNN.tmp`."""
    return bool(_PARTIAL_RE.match(Path(path).name)) and Path(path).is_dir()


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def checkpoint_step(path: str | Path) -> int:
    m = _CHECKPOINT_RE.match(Path(path).name)
    if not m:
        raise TxkitError(f"{path}: not a checkpoint folder (expected checkpoint-NNNNNNNN)")
    return int(m.group(1))


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / "config.json").is_file()


def is_run_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / CHECKPOINTS).is_dir() or (p / RECIPE_FILE).is_file()


def resolve_model(path_or_id: str | Path) -> str:
    """What a command that takes MODEL loads: a model folder as is; a run directory's final model, else its
    best checkpoint, else its latest; anything else that looks like `user/name` is a Hub id."""
    p = Path(path_or_id)
    if p.exists():
        if is_model_dir(p):
            return str(p)
        if is_run_dir(p):
            for candidate in (p / FINAL_MODEL, p / BEST):
                if is_model_dir(candidate):
                    return str(candidate)
            latest = latest_checkpoint(p)
            if latest is not None:
                return str(latest)
            raise TxkitError(f"{p}: run directory has no complete checkpoint yet")
        raise TxkitError(f"{p}: not a model folder (no config.json) nor a run directory")
    text = str(path_or_id)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", text) and not text.startswith((".", "/")):
        return text  # a Hub id
    raise TxkitError(f"{path_or_id}: no such model folder, run directory or Hub id")


def read_log(path: str | os.PathLike) -> list[dict]:
    """The records of a log.jsonl, oldest first; a last line cut by a kill is ignored."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise TxkitError(f"{path}: no training log (is it a run directory written by txkit train?)") from None
    except UnicodeDecodeError as exc:
        raise TxkitError(f"{path}: not UTF-8 text (byte offset {exc.start}); is it a txkit log?") from None
    except OSError as exc:
        raise TxkitError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the line being written when the run was killed
                continue
            raise TxkitError(f"{path} line {number}: not valid JSON") from None
        if isinstance(record, dict) and "step" in record:
            if not isinstance(record["step"], int) or isinstance(record["step"], bool):
                raise TxkitError(f'{path} line {number}: "step" must be an integer, not {json.dumps(record["step"])}')
            records.append(record)
    return records


def trained_directions(folder: Path) -> list[tuple[str, str, str]] | None:
    """(source, target, tag) of every corpus a model trained on, from the recipe.yaml saved with it (in the model
    folder or its run directory): a distillation teacher's directions, `txkit translate --target-lang`'s tag.
    None when there is none to read."""
    import yaml

    for place in (folder, folder.parent, folder.parent.parent):
        recipe = place / RECIPE_FILE
        if recipe.is_file() and (place == folder or is_run_dir(place)):
            try:
                data = (yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}).get("data") or {}
            except (yaml.YAMLError, UnicodeDecodeError, AttributeError):
                return None
            if not isinstance(data, dict):  # a recipe.yaml not written by txkit: nothing to read
                return None
            src, tgt, train = data.get("src_lang"), data.get("tgt_lang"), data.get("train")
            entries = train if isinstance(train, list) else [{}]
            return list(dict.fromkeys((e.get("src_lang") or src, e.get("tgt_lang") or tgt, e.get("tag") or "")
                                      for e in entries if isinstance(e, dict)))  # fmt: skip
    return None
