"""`txkit run RECIPE`: every stage from corpus files to a shareable, scored model, resumable.

    data        fetch missing corpus files from their public source (txkit.fetch)
    tokenizer   build the recipe's subword vocabulary                    -> RUN/tokenizer
    distill     (distill.teacher) the teacher translates data.train      -> RUN/distill/<key> (txkit.distill)
    train       train, continuing from the latest checkpoint             -> RUN/checkpoints, RUN/log.jsonl
    average     average the last `eval.average_last` checkpoints         -> RUN/model
    translate   translate each test set with the recipe's search         -> RUN/translations/<test>.<tgt>
    evaluate    sacreBLEU BLEU (cased, lowercased, tokenized) and chrF   -> RUN/eval/<test>.json
    card        the model card of the shareable folder                   -> RUN/model/README.md
    report      training curves and a summary                            -> RUN/report.png, RUN/report.md

Each stage that finishes writes RUN/stages/<stage>.done: JSON with the inputs it depended on (recipe keys
and the fingerprints of the stages before it), what it produced, and when. A stage is skipped when its
marker records the same inputs and its outputs still exist; a stage whose inputs changed runs again, and so
does everything after it (a new beam size re-translates and re-scores, but does not retrain). Training is
the exception: a finished run whose training keys changed is an error, not a silent retraining (raising
train.max_steps continues it). An interrupted training (killed, Ctrl-C, train.stop_after_steps) continues
from its latest checkpoint on the next `txkit run`.

Every output is written under a temporary name and renamed, so an interruption at any point leaves either
the previous output or none, never a half-written one.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from txkit import atomic, runs
from txkit.errors import TxkitError
from txkit.options import ScoreOptions
from txkit.pipeline_eval import stage_card, stage_evaluate, stage_report, stage_translate
from txkit.recipe import Recipe, resolve_tokenizer_path

STAGES_DIR = runs.STAGES_DIR  # the run directory's names are runs.py's
TRAINING_INFO = runs.TRAINING_INFO

# Recipe keys that change how training runs but not the model it reaches (or that only stop it early).
_TRAIN_KEYS_IGNORED = {
    "data.num_proc", "train.stop_after_steps", "train.log_every_steps", "train.save_every_steps",
    "train.save_every_minutes", "train.keep_last", "train.eval_every_steps",
}  # fmt: skip
_TOKENIZER_KEYS = ("data.train", "data.src_lang", "data.tgt_lang", "data.hub_config", "data.max_sentences")


@dataclass
class PipelineResult:
    """What `run_pipeline` did: `complete` is False when training stopped before its last step."""

    run_dir: Path
    model_dir: Path
    complete: bool
    stages: dict[str, str] = field(default_factory=dict)  # stage -> "ran" | "skipped"
    reports: dict[str, dict] = field(default_factory=dict)  # test name -> eval report
    report_markdown: Path | None = None


# ----------------------------------------------------------------------------- markers


def _fingerprint(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunMarkers:
    """One `txkit run` (the stages here and in txkit.pipeline_eval): the recipe, the run directory, the stage markers and what was printed."""

    def __init__(self, recipe: Recipe, run_dir: Path, echo: Callable[[str], None]):
        self.recipe = recipe
        self.run_dir = run_dir
        self.echo = echo
        self.flat = recipe.flat()
        self.fingerprints: dict[str, str] = {}
        self.stages: dict[str, str] = {}
        self.student_recipe = recipe  # what training reads: with distillation, data.train on the teacher's output
        self.teacher = None  # distill.teacher: (model folder, corpora), once checked

    def keys(self, names) -> dict:
        return {name: self.flat[name] for name in names}

    def marker_path(self, stage: str) -> Path:
        return self.run_dir / STAGES_DIR / f"{stage}.done"

    def read_marker(self, stage: str) -> dict | None:
        path = self.marker_path(stage)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:  # cannot happen with atomic writes; treat as not done
            return None

    def done(self, stage: str, inputs: dict) -> dict | None:
        """The stage's marker when it recorded these inputs and its outputs all exist (then: skip it)."""
        marker = self.read_marker(stage)
        if marker is None or marker.get("inputs") != json.loads(json.dumps(inputs, default=str)):
            return None
        if not all((self.run_dir / p).exists() for p in marker.get("outputs", [])):
            return None
        self.fingerprints[stage] = _fingerprint(inputs)
        self.stages[stage] = "skipped"
        when = marker.get("finished", "")
        produced = ", ".join(marker.get("outputs", [])[:3]) + (" ..." if len(marker.get("outputs", [])) > 3 else "")
        self.echo(f"skip {stage}: done {when}" + (f" ({produced})" if produced else ""))
        return marker

    def finish(self, stage: str, inputs: dict, outputs: list[Path], started: float, **info) -> None:
        """Write the stage's marker atomically."""
        record = {
            "stage": stage,
            "inputs": inputs,
            "outputs": [self._relative(Path(p)) for p in outputs],
            "finished": datetime.datetime.now().isoformat(timespec="seconds"),
            "seconds": round(time.monotonic() - started, 3),
            **info,
        }
        path = self.marker_path(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, json.dumps(record, indent=2, default=str) + "\n")
        self.fingerprints[stage] = _fingerprint(inputs)
        self.stages[stage] = "ran"

    def _relative(self, path: Path) -> str:
        """A path inside the run directory relative to it (the run can be moved); others absolute."""
        try:
            return str(path.relative_to(self.run_dir))
        except ValueError:
            return str(path.resolve())

    def start(self, stage: str, what: str) -> float:
        self.echo(f"run  {stage}: {what}")
        return time.monotonic()


def _write_atomic(path: Path, text: str) -> None:
    atomic.write_text(path, text)


# ----------------------------------------------------------------------------- stages


def stage_data(run: RunMarkers, fetch: bool = True) -> None:
    """Fetch missing corpus files (no marker: the files themselves say whether it is done)."""
    from txkit import fetch as fetching
    from txkit.recipe import check_data_files

    missing = fetching.missing_files(run.recipe)
    if not missing:
        run.stages["data"] = "skipped"
        run.echo("skip data: every corpus file is present")
        return
    if not fetch:
        key, path = missing[0]
        raise TxkitError(f"{key}: data file not found: {path} (and fetching is off)")
    started = run.start("data", f"{len(missing)} corpus file(s) missing")
    fetching.fetch_recipe_data(run.recipe, log=lambda m: run.echo(f"     {m}"))
    check_data_files(run.recipe)
    run.stages["data"] = "ran"
    run.echo(f"     data: done in {time.monotonic() - started:.0f} s")


def stage_tokenizer(run: RunMarkers) -> None:
    from txkit.prepare import build_recipe_tokenizer

    # tokenizer.dropout is how training samples segmentations, not part of the vocabulary (_train_inputs has it)
    inputs = {**run.keys(k for k in run.flat if k.startswith("tokenizer.") and k != "tokenizer.dropout"),
              **run.keys(_TOKENIZER_KEYS)}  # fmt: skip
    if run.done("tokenizer", inputs):
        return
    path = resolve_tokenizer_path(run.recipe, run.run_dir)
    previous = run.read_marker("tokenizer")
    if previous is not None and (path / "tokenizer.json").is_file():
        changed = _changed(previous["inputs"], inputs)
        raise TxkitError(
            f"{path} was built with {changed}; a new vocabulary needs a new run: choose another --output-dir"
        )
    t = run.recipe.tokenizer
    started = run.start("tokenizer", f"{t.model}, {t.vocab_size} tokens -> {path}")
    if not (path / "tokenizer.json").is_file():
        build_recipe_tokenizer(run.recipe, path)
    else:
        run.echo(f"     {path} exists (built by txkit train): kept")
    run.finish("tokenizer", inputs, [path], started)


def _changed(old: dict, new: dict) -> str:
    diffs = [f"{k}={old.get(k)!r} (the recipe now says {new.get(k)!r})" for k in sorted(set(old) | set(new))
             if old.get(k) != new.get(k)]  # fmt: skip
    return "; ".join(diffs) or "other inputs"


_RECORDED_WHEN_ON = ("train.ema_decay", "tokenizer.dropout", "data.eval_tag")


def _train_inputs(run: RunMarkers) -> dict:
    keys = [k for k in run.flat if k.split(".")[0] in ("model", "data", "train") and k not in _TRAIN_KEYS_IGNORED]
    keys.append("tokenizer.dropout")
    # keys newer than existing runs count only when switched on, so that a finished run's record still matches
    keys = [k for k in keys if k not in _RECORDED_WHEN_ON or run.flat[k]]
    inputs = {**run.keys(keys), "tokenizer": run.fingerprints.get("tokenizer")}
    if run.recipe.distill.teacher:  # the student trains on the teacher's translations (recorded only then)
        inputs.update({"distill": run.fingerprints.get("distill"), **run.keys(["distill.original_weight"])})
    return inputs


def _refuse_changed_training(run: RunMarkers, inputs: dict, outputs_gone: bool = False) -> None:
    """A finished training whose inputs changed (or, `outputs_gone`, whose outputs are gone) is an error; raising
    train.max_steps alone continues it."""
    previous = run.read_marker("train")
    if previous is None:
        return
    old = previous["inputs"]
    changed = {k for k in set(old) | set(inputs) if old.get(k) != inputs.get(k)}
    more_steps = changed == {"train.max_steps"} and inputs["train.max_steps"] > old["train.max_steps"]
    if (changed or outputs_gone) and not more_steps:
        raise TxkitError(
            f"{run.run_dir} finished training with {_changed(old, inputs)}; txkit does not retrain a finished "
            "run in place: choose another --output-dir (raising train.max_steps alone continues the run)"
        )


def check_teacher(run: RunMarkers):
    """(teacher model folder, the corpora it translates) of distill.teacher: checked before anything is built."""
    from txkit import distill

    if run.teacher is None:
        folder = distill.resolve_teacher(run.recipe.distill.teacher)
        run.teacher = (folder, distill.plan(run.recipe, folder))
    return run.teacher


def stage_distill(run: RunMarkers) -> None:
    """Sequence-level distillation (distill.teacher): the teacher's translations of data.train's sources, made
    once per translation key (txkit.distill) and reused; the student then trains on them."""
    spec = run.recipe.distill.teacher
    if not spec:
        return
    from txkit import distill

    teacher, corpora = check_teacher(run)
    key, described = distill.translation_key(run.recipe, teacher, corpora)
    inputs = {"key": key}
    run.fingerprints["distill"] = _fingerprint(inputs)
    _refuse_changed_training(run, _train_inputs(run))  # before the teacher spends minutes translating
    folder = run.run_dir / runs.DISTILL_DIR / key
    run.student_recipe = distill.distilled_recipe(run.recipe, folder, corpora)
    if run.done("distill", inputs):
        return
    d = run.recipe.distill
    started = run.start("distill", f"{teacher} translates data.train's sources (beam {d.beam_size}, alpha "
                                   f"{d.length_penalty} {d.lp_form}, engine {d.engine}) -> {folder}")  # fmt: skip
    if (folder / distill.COMPLETE).is_file():
        run.echo(f"     {folder}: made before with the same teacher weights, search and sources: reused")
    else:
        distill.translate_corpora(run.recipe, teacher, corpora, folder, echo=run.echo, spec=spec)
    for old in distill.prune(folder):
        run.echo(f"     removed {old} (another teacher, search or corpus)")
    run.finish("distill", inputs, [folder / distill.COMPLETE], started, teacher=str(teacher),
               translation=described)  # fmt: skip


def stage_train(run: RunMarkers) -> bool:
    """Train (or continue training) to train.max_steps; False when training stopped before it."""
    inputs = _train_inputs(run)
    if run.done("train", inputs):
        return True
    _refuse_changed_training(run, inputs, outputs_gone=True)
    max_steps = run.recipe.train.max_steps
    latest = runs.latest_checkpoint(run.run_dir)
    done_step = runs.checkpoint_step(latest) if latest is not None else 0
    started = time.monotonic()
    wall = _read_partial_wall_time(run)
    if done_step >= max_steps:  # trained already, e.g. by `accelerate launch -m txkit train`
        run.echo(f"run  train: {latest.name} is step {done_step} of {max_steps}: training is complete")
        stop_reason, step = "max_steps", done_step
    else:
        from txkit.training import train

        what = f"continuing from {latest.name}" if latest is not None else "from scratch"
        run.start("train", f"{what} to step {max_steps}")
        try:
            result = train(run.student_recipe, run.run_dir, resume=True, hooks=training_hooks())
        finally:
            wall += time.monotonic() - started
            _write_partial_wall_time(run, wall)
        stop_reason, step = result.stop_reason, result.step
        if stop_reason == "stop_after_steps":
            run.echo(f"     train: stopped at step {step} of {max_steps} (train.stop_after_steps); "
                     "`txkit run` again continues from the latest checkpoint")  # fmt: skip
            run.stages["train"] = "ran"
            return False
        run.echo(f"     train: step {step} ({stop_reason}) after {time.monotonic() - started:.0f} s")
    checkpoints = runs.list_checkpoints(run.run_dir)
    info = _training_info(run, checkpoints[-1], wall or None)  # None: trained outside txkit run
    _write_atomic(run.run_dir / TRAINING_INFO, json.dumps(info, indent=2) + "\n")
    run.finish("train", inputs, [checkpoints[-1], run.run_dir / TRAINING_INFO], started,
               step=step, stop_reason=stop_reason)  # fmt: skip
    return True


def training_hooks():
    """What training gets from the later stages (validation BLEU, model cards of checkpoints), handed in
    because the training stage imports neither (txkit.training.TrainHooks)."""
    from txkit.evaluation import score
    from txkit.hub import write_model_card
    from txkit.training import TrainHooks

    def bleu(hyps: list[str], refs: list[str], eval_section) -> float:
        options = ScoreOptions(metrics=("bleu",), lowercase=eval_section.lowercase, tokenize=eval_section.tokenize,
                               bootstrap=0)  # fmt: skip
        return score(hyps, [refs], options)["bleu"]["score"]

    return TrainHooks(bleu=bleu, model_folder_saved=write_model_card)


def _read_partial_wall_time(run: RunMarkers) -> float:
    path = run.run_dir / STAGES_DIR / runs.TRAIN_WALL_TIME
    try:
        return float(path.read_text())
    except (FileNotFoundError, ValueError):
        return 0.0


def _write_partial_wall_time(run: RunMarkers, seconds: float) -> None:
    """Training wall time summed over interrupted `txkit run`s (what the model card reports)."""
    path = run.run_dir / STAGES_DIR / runs.TRAIN_WALL_TIME
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, f"{seconds:.1f}\n")


def _training_info(run: RunMarkers, checkpoint: Path, wall_time_s: float | None) -> dict:
    """training_info.json for the model card: steps and tokens from the last checkpoint's trainer state."""
    from txkit.train_state import TrainState

    has_state = (checkpoint / runs.TRAINING_STATE / runs.TRAINER_STATE).is_file()
    state = TrainState.from_checkpoint(checkpoint) if has_state else None
    info = {
        "steps": state.step if state else runs.checkpoint_step(checkpoint),
        "src_tokens": state.tokens_src if state else None,
        "tgt_tokens": state.tokens_tgt if state else None,
        "wall_time_s": round(wall_time_s, 1) if wall_time_s else None,
        "hardware": _hardware(state.world_size if state else 1) if wall_time_s else None,
        "date": datetime.date.today().isoformat(),
    }
    return {k: v for k, v in info.items() if v is not None}


def _hardware(world_size: int) -> str:
    import torch

    if torch.cuda.is_available():
        return f"{world_size}x {torch.cuda.get_device_name(0)}"
    return f"CPU ({os.cpu_count()} cores)"


def stage_average(run: RunMarkers) -> None:
    from txkit.averaging import average_checkpoints, last_checkpoints

    n = run.recipe.eval.average_last
    checkpoints = last_checkpoints(run.run_dir, n, strict=False)
    inputs = {"eval.average_last": n, "checkpoints": [p.name for p in checkpoints], "train": run.fingerprints["train"]}
    use_ema = bool(run.recipe.train.ema_decay) and run.recipe.eval.final_weights == "ema"
    if use_ema:  # the moving average each checkpoint keeps (train.ema_decay), averaged as model folders
        inputs["eval.final_weights"] = "ema"
        checkpoints = [p / runs.TRAINING_STATE / runs.EMA_DIR for p in checkpoints]
    model_dir = run.run_dir / runs.FINAL_MODEL
    if run.done("average", inputs):
        return
    names = [(p.parents[1] if use_ema else p).name for p in checkpoints]
    started = run.start("average", f"{len(checkpoints)} checkpoint(s) {names[0]} .. {names[-1]}"
                                   f"{' (their EMA weights)' if use_ema else ''} -> {model_dir}")  # fmt: skip
    if len(checkpoints) < n:
        run.echo(f"     warning: eval.average_last is {n} but the run has only {len(checkpoints)} checkpoint(s)")
    average_checkpoints(checkpoints, model_dir)
    # The shareable folder carries how it was made: the resolved recipe and the training record.
    for name in (runs.RECIPE_FILE, TRAINING_INFO):
        if (run.run_dir / name).is_file():
            shutil.copy2(run.run_dir / name, model_dir / name)
    run.finish("average", inputs, [model_dir / "model.safetensors"], started)


# ----------------------------------------------------------------------------- the whole run


def run_pipeline(recipe: Recipe, run_dir: str | os.PathLike, *, fetch: bool = True,
                 echo: Callable[[str], None] = print) -> PipelineResult:  # fmt: skip
    """Run every stage of `recipe` in `run_dir`, skipping those already complete.

    Raises:
        TxkitError: a missing corpus that cannot be fetched, a run directory made with a different recipe,
            or any user error of a stage.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TxkitError(
            "txkit run runs in one process; on several GPUs train first with `accelerate launch -m txkit train "
            "RECIPE --output-dir RUN --resume`, then `txkit run RECIPE --output-dir RUN` does the other stages"
        )
    run_dir = Path(run_dir)
    try:
        (run_dir / STAGES_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TxkitError(f"cannot write to output directory {run_dir}: {exc.strerror or exc}") from None
    run = RunMarkers(recipe, run_dir, echo)
    result = PipelineResult(run_dir=run_dir, model_dir=run_dir / runs.FINAL_MODEL, complete=False, stages=run.stages)
    stage_data(run, fetch=fetch)
    if recipe.distill.teacher:
        check_teacher(run)
    stage_tokenizer(run)
    stage_distill(run)
    if not stage_train(run):
        return result
    stage_average(run)
    stage_translate(run)
    result.reports = stage_evaluate(run)
    stage_card(run, result.reports)
    result.report_markdown = stage_report(run)
    result.complete = True
    return result
