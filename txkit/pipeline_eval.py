"""The stages of `txkit run` after training: translate each test set (in each direction, for a multilingual
recipe), score it, write the model card and the run's report. Each stage keeps its marker through the run's
`RunMarkers` (txkit.pipeline), so a finished test set is kept and a changed search re-translates and re-scores
only what it changes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from txkit import atomic, runs
from txkit.corpus_spec import EvalSet, eval_sets, parse_corpus_spec
from txkit.options import ScoreOptions, SearchOptions
from txkit.recipe import Recipe, resolve_data_path

if TYPE_CHECKING:
    from txkit.pipeline import RunMarkers

BOOTSTRAP_SAMPLES = 1000  # for the 95% confidence intervals of the test scores

# Every search option re-translates when it changes: the keys come from SearchOptions' fields, so a new
# search key is noticed without a list to keep by hand.
_DECODE_KEYS = tuple(f"eval.{f.name}" for f in dataclasses.fields(SearchOptions))
# the engine keys count only when not their defaults, so runs made before they existed are not re-translated
_ENGINE_DEFAULTS = {"eval.engine": "txkit", "eval.quantize": "none"}


def corpus_name(spec: str) -> str:
    """The short name of a test corpus: `multi30k/test2016` -> test2016, `hub:wmt/wmt14` -> wmt14-test."""
    return parse_corpus_spec(spec).name


def _test_sets(run: RunMarkers) -> dict[str, EvalSet]:
    """eval.test as the directions to score, by name (test2016; test2016.en-fr for a multilingual recipe)."""
    return {t.name: t for t in eval_sets(run.recipe)}


def _load_test(run: RunMarkers, test: EvalSet):
    from txkit.prepare import load_corpus

    ds = load_corpus(run.recipe, test.path, "test", (test.src_lang, test.tgt_lang))
    return list(ds["src"]), list(ds["tgt"])


def translate_inputs(run: RunMarkers, test: EvalSet | str) -> dict:
    """What a test set's translation depends on: every search option, the test set (and its direction, for a
    multilingual recipe) and the model."""
    keys = {**run.keys(_ENGINE_DEFAULTS), "eval.engine": _test_engine(run)}  # auto: the engine it picks
    engine = {k: v for k, v in keys.items() if v != _ENGINE_DEFAULTS[k]}
    tag = {"data.eval_tag": run.recipe.data.eval_tag} if run.recipe.data.eval_tag else {}  # recorded only when set
    spec = test if isinstance(test, str) else test.path
    inputs = {**run.keys(_DECODE_KEYS), **engine, "test": spec, "model": run.fingerprints.get("average"), **tag}
    if not isinstance(test, str) and test.directional:  # recorded only for multilingual recipes, as before
        inputs["direction"] = [test.src_lang, test.tgt_lang, test.tag]
    return inputs


def _translation_file(run: RunMarkers, test: EvalSet) -> Path:
    return run.run_dir / runs.TRANSLATIONS_DIR / f"{test.base}.{test.tgt_lang}"


def _test_options(run: RunMarkers):
    from txkit.options import DecodeOptions

    e = run.recipe.eval
    return DecodeOptions(**e.search_options(), engine=e.engine, quantize=e.quantize)


def _test_engine(run: RunMarkers) -> str:
    """The engine that translates the test sets (eval.engine auto: txkit.engines.choose_engine's pick)."""
    from txkit.engines import choose_engine

    return choose_engine(_test_options(run), [run.run_dir / runs.FINAL_MODEL])


def stage_translate(run: RunMarkers) -> None:
    """Translate every test set with RUN/model; one marker per test set, so a finished one is kept."""
    e = run.recipe.eval
    model_dir = run.run_dir / runs.FINAL_MODEL
    todo = {}
    for name, test in _test_sets(run).items():
        inputs = translate_inputs(run, test)
        if not run.done(f"translate-{name}", inputs):
            todo[name] = (test, inputs)
    if not todo:
        return
    from txkit.engines import load_translator

    translator = load_translator(model_dir, _test_options(run))
    folder = run.run_dir / runs.TRANSLATIONS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for name, (test, inputs) in todo.items():
        out = _translation_file(run, test)
        tagged = f", tag {test.tag}" if test.tag else ""
        started = run.start(f"translate-{name}", f"{test.path} {test.src_lang}->{test.tgt_lang}{tagged} "
                                                 f"(beam {e.beam_size}, alpha {e.length_penalty}) -> {out}")  # fmt: skip
        sources, _ = _load_test(run, test)
        if test.tag:  # a multilingual model: the tag picks the direction
            from txkit.corpus_spec import tag_text

            sources = [tag_text(test.tag, s) for s in sources]
        hyps = translator.translate(sources)
        atomic.write_text(out, "".join(h + "\n" for h in hyps))
        seconds = time.monotonic() - started
        run.echo(f"     {len(hyps)} sentences in {seconds:.1f} s")
        device = str(next(translator.model.parameters()).device) if hasattr(translator, "model") else "ctranslate2"
        run.finish(f"translate-{name}", inputs, [out], started, lines=len(hyps), device=device)


def stage_evaluate(run: RunMarkers) -> dict[str, dict]:
    """Score each translation: BLEU (cased; lowercased and the literature's tokenized BLEU as separate, labelled
    entries) and chrF, with 95% CIs."""
    from txkit.evaluation import build_report, read_lines, score, write_report

    e = run.recipe.eval
    reports = {}
    folder = run.run_dir / runs.EVAL_DIR
    tests = _test_sets(run)
    for name, test in tests.items():
        out = folder / f"{name}.json"
        inputs = {"eval.tokenize": e.tokenize, "bootstrap": BOOTSTRAP_SAMPLES, "test": test.path,
                  "tokenized_bleu": "moses", "translation": run.fingerprints[f"translate-{name}"]}  # fmt: skip
        if test.directional:
            inputs["direction"] = [test.src_lang, test.tgt_lang, test.tag]
        if run.done(f"evaluate-{name}", inputs):
            reports[name] = json.loads(out.read_text(encoding="utf-8"))
            continue
        started = run.start(f"evaluate-{name}", f"BLEU, lowercased BLEU, tokenized BLEU, chrF -> {out}")
        hyp_file = _translation_file(run, test)
        hyps = read_lines(hyp_file)
        _, refs = _load_test(run, test)
        ref_path = parse_corpus_spec(resolve_data_path(test.path)).target_file(test.tgt_lang)
        system = {"path": str(hyp_file), "model": str(run.run_dir / runs.FINAL_MODEL), "lines": len(hyps)}
        options = ScoreOptions(metrics=("bleu", "chrf"), tokenize=e.tokenize, bootstrap=BOOTSTRAP_SAMPLES)
        report = build_report(
            hyps, [refs], system=system, references=[{"path": ref_path, "lines": len(refs)}], options=options
        )
        # The Multi30k literature reports BLEU on lowercased text: a separate entry, never instead of cased BLEU.
        lowercased = score(hyps, [refs], dataclasses.replace(options, metrics=("bleu",), lowercase=True))["bleu"]
        lowercased["name"] = "BLEU (lowercased)"
        # The literature's tokenized BLEU (lowercased, Moses-tokenized), labelled as such: a comparison figure.
        tokenized = score(hyps, [refs], dataclasses.replace(options, metrics=("bleu_tokenized",),
                                                             moses_lang=test.tgt_lang))["bleu_tokenized"]  # fmt: skip
        scores = report["scores"]
        report["scores"] = {"bleu": scores["bleu"], "bleu_lowercase": lowercased, "bleu_tokenized": tokenized,
                            "chrf": scores["chrf"]}  # fmt: skip
        corpus, base = parse_corpus_spec(test.path).collection, test.base
        shown = f"{corpus} {base}" if corpus != base else base
        if test.directional:  # the card and the report list each direction
            shown += f" {test.src_lang}-{test.tgt_lang}"
            report["languages"] = [test.src_lang, test.tgt_lang]
            report["tag"] = test.tag
        report["dataset"] = {"type": corpus, "name": shown}
        folder.mkdir(parents=True, exist_ok=True)
        write_report(out, report)
        run.finish(f"evaluate-{name}", inputs, [out], started,
                   scores={k: round(v["score"], 2) for k, v in report["scores"].items()})  # fmt: skip
        reports[name] = report
    _drop_stale_scores(run, set(tests))
    return reports


def _drop_stale_scores(run: RunMarkers, current: set[str]) -> None:
    """Score files `txkit run` wrote for test sets the recipe no longer scores (e.g. RUN/eval/test2016.json of a
    multilingual run scored en->de only, now test2016.en-de.json): removed with their markers, so that the report
    lists only what the recipe scores. Only files a marker records as this run's own output are touched."""
    for marker in sorted((run.run_dir / runs.STAGES_DIR).glob("evaluate-*.done")):
        name = marker.name[len("evaluate-") : -len(".done")]
        if name in current:
            continue
        record = run.read_marker(f"evaluate-{name}") or {}
        for output in record.get("outputs", []):
            path = run.run_dir / output
            if path.parent == run.run_dir / runs.EVAL_DIR and path.name == f"{name}.json" and path.is_file():
                path.unlink()
                run.echo(f"     removed {path} (its test set is no longer scored by the recipe)")
        marker.unlink()


def stage_card(run: RunMarkers, reports: dict[str, dict]) -> None:
    from txkit.hub import write_model_card

    model_dir = run.run_dir / runs.FINAL_MODEL
    inputs = {"model": run.fingerprints["average"],
              "scores": {name: run.fingerprints[f"evaluate-{name}"] for name in reports}}  # fmt: skip
    if run.done("card", inputs):
        return
    started = run.start("card", f"{model_dir / runs.MODEL_CARD}")
    info_file = run.run_dir / runs.TRAINING_INFO
    info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else None
    path = write_model_card(model_dir, recipe=run.recipe, eval_report=list(reports.values()), training_info=info,
                            model_name=model_name(run.recipe, run.run_dir))  # fmt: skip
    run.finish("card", inputs, [path], started)


def model_name(recipe: Recipe, run_dir: Path) -> str:
    """recipes/multi30k-en-de/transformer-tiny.yaml -> multi30k-en-de-transformer-tiny (else the run's folder)."""
    source = Path(recipe.source)
    if source.suffix in (".yaml", ".yml") and source.parent.name:
        return f"{source.parent.name}-{source.stem}"
    return run_dir.resolve().name


def stage_report(run: RunMarkers) -> Path:
    from txkit.report import MARKDOWN_NAME, PNG_NAME, write_run_report

    log = run.run_dir / runs.LOG_FILE
    stat = log.stat() if log.is_file() else None
    inputs = {"log": [stat.st_size, stat.st_mtime_ns] if stat else None,
              "scores": sorted((k, v) for k, v in run.fingerprints.items() if k.startswith("evaluate-"))}  # fmt: skip
    if run.done("report", inputs):
        return run.run_dir / MARKDOWN_NAME
    started = run.start("report", f"{run.run_dir / PNG_NAME}, {run.run_dir / MARKDOWN_NAME}")
    files = write_run_report(run.run_dir)
    run.finish("report", inputs, [files.png, files.markdown], started)
    return files.markdown
