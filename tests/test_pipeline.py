"""`txkit run` end to end on the CPU: a tiny recipe on a slice of Multi30k goes through every stage; an
interrupted training continues; a second run skips everything; a changed decoding key redoes only the
stages after training; a changed training key of a finished run is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli

TEST_LINES = 50
TSV_LINES = 10  # a second test set, in one .tsv file

RECIPE = """\
model:
  preset: transformer-tiny
  d_model: 32
  encoder_layers: 2
  decoder_layers: 2
  attention_heads: 4
  ffn_dim: 64
  dropout: 0.1
  max_position_embeddings: 128
tokenizer:
  vocab_size: 600
data:
  train: multi30k/train
  valid: multi30k/val
  src_lang: en
  tgt_lang: de
  max_len: 64
  max_sentences: 400
  valid_max_sentences: 16
train:
  max_steps: 12
  max_tokens: 384
  lr_schedule: inverse_sqrt
  lr: 0.005
  warmup_steps: 5
  save_every_steps: 6
  save_every_minutes: 0
  keep_last: 2
  eval_every_steps: 6
  log_every_steps: 3
eval:
  beam_size: 2
  max_len_b: 10
  average_last: 2
  test: [slice/test50, slice/test10.tsv]
"""


def _stage_lines(out: str, verb: str) -> set[str]:
    return {line.split(":")[0].split()[1] for line in out.splitlines() if line.startswith(f"{verb} ")}


def _outputs(run_dir: Path) -> dict[Path, int]:
    """Every file of the run (markers included), with its modification time."""
    return {p: p.stat().st_mtime_ns for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def workspace(shared_data, tmp_path_factory):
    """$TXKIT_DATA with Multi30k (a link to the shared copy) and a 50-sentence test set, and the recipe."""
    root = tmp_path_factory.mktemp("pipeline")
    data = root / "data"
    (data / "slice").mkdir(parents=True)
    (data / "multi30k").symlink_to(shared_data / "multi30k")
    sides = {}
    for lang in ("en", "de"):
        lines = (shared_data / "multi30k" / f"test2016.{lang}").read_text(encoding="utf-8").splitlines()
        (data / "slice" / f"test50.{lang}").write_text("\n".join(lines[:TEST_LINES]) + "\n", encoding="utf-8")
        sides[lang] = lines[TEST_LINES : TEST_LINES + TSV_LINES]
    tsv = "".join(f"{en}\t{de}\n" for en, de in zip(sides["en"], sides["de"]))
    (data / "slice" / "test10.tsv").write_text(tsv, encoding="utf-8")
    recipe = root / "tiny-run.yaml"
    recipe.write_text(RECIPE, encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TXKIT_DATA", str(data))
        yield root, data, recipe


@pytest.fixture(scope="module")
def finished_run(workspace):
    """An interrupted first `txkit run` (stopped at step 6), then a second that finishes it."""
    root, data, recipe = workspace
    run_dir = root / "run"
    first = run_cli(["run", str(recipe), "-o", str(run_dir), "--set", "train.stop_after_steps=6"])
    second = run_cli(["run", str(recipe), "-o", str(run_dir)])
    return run_dir, data, recipe, first, second


ALL_STAGES = {"tokenizer", "train", "average", "translate-test50", "evaluate-test50", "translate-test10",
              "evaluate-test10", "card", "report"}


def test_interrupted_training_stops_the_run_and_the_next_run_continues_it(finished_run):
    run_dir, _, _, (code1, out1, err1), (code2, out2, err2) = finished_run
    assert code1 == 1, out1 + err1
    assert "stopped at step 6 of 12" in out1 and "run the same command again" in err1
    assert _stage_lines(out1, "run") == {"tokenizer", "train"}
    assert code2 == 0, out2 + err2
    assert "skip tokenizer" in out2 and "run  train: continuing from checkpoint-00000006 to step 12" in out2
    # one uninterrupted log: every logged training step once, up to the last
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == [3, 6, 9, 12]
    assert json.loads((run_dir / "stages" / "train.done").read_text())["step"] == 12


def test_every_stage_leaves_its_output(finished_run):
    import sacrebleu

    run_dir, data, _, _, (code, out, _) = finished_run
    assert _stage_lines(out, "run") == ALL_STAGES - {"tokenizer"}
    assert (run_dir / "tokenizer" / "tokenizer.json").is_file()
    checkpoints = sorted((run_dir / "checkpoints").iterdir())
    assert [p.name for p in checkpoints] == ["checkpoint-00000006", "checkpoint-00000012"]
    model = run_dir / "model"
    averaged = json.loads((model / "averaging.json").read_text())["averaged"]
    assert [Path(p).name for p in averaged] == ["checkpoint-00000006", "checkpoint-00000012"]
    assert (model / "model.safetensors").is_file() and (model / "recipe.yaml").is_file()
    info = json.loads((model / "training_info.json").read_text())
    assert info["steps"] == 12 and info["tgt_tokens"] > 0 and info["hardware"].startswith("CPU")

    # translations: one line per test sentence, scored exactly as sacreBLEU scores them
    hyps = (run_dir / "translations" / "test50.de").read_text(encoding="utf-8").splitlines()
    refs = (data / "slice" / "test50.de").read_text(encoding="utf-8").splitlines()
    assert len(hyps) == TEST_LINES
    report = json.loads((run_dir / "eval" / "test50.json").read_text())
    scores = report["scores"]
    assert list(scores) == ["bleu", "bleu_lowercase", "bleu_tokenized", "chrf"]
    assert scores["bleu"]["score"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert scores["bleu_lowercase"]["score"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], lowercase=True).score)
    assert scores["chrf"]["score"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert "case:lc" in scores["bleu_lowercase"]["signature"] and "case:mixed" in scores["bleu"]["signature"]
    from sacremoses import MosesTokenizer

    moses = MosesTokenizer(lang="de")
    tok_hyps, tok_refs = ([moses.tokenize(x.lower(), escape=False, return_str=True) for x in xs] for xs in (hyps, refs))
    assert scores["bleu_tokenized"]["score"] == pytest.approx(sacrebleu.corpus_bleu(tok_hyps, [tok_refs], tokenize="none").score)
    assert scores["bleu_tokenized"]["name"] == "BLEU (tokenized, lowercased, Moses)"
    assert report["references"][0]["path"] == str(data / "slice" / "test50.de")
    # a .tsv test set: its references are read from the .tsv itself, and the report names that file
    tsv_report = json.loads((run_dir / "eval" / "test10.json").read_text())
    assert tsv_report["references"] == [{"path": str(data / "slice" / "test10.tsv"), "lines": TSV_LINES}]
    tsv_hyps = (run_dir / "translations" / "test10.de").read_text(encoding="utf-8").splitlines()
    assert len(tsv_hyps) == TSV_LINES

    # the model card and the report carry the scores; the end of the output names table and model
    card = (model / "README.md").read_text(encoding="utf-8")
    assert f"{scores['bleu']['score']:.2f}" in card and "BLEU (lowercased)" in card
    assert f"| BLEU (tokenized, lowercased, Moses) | {scores['bleu_tokenized']['score']:.2f} |" in card
    summary = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "| BLEU (tokenized, lowercased, Moses) |" in summary
    cells = [f"{scores[k]['score']:.2f}" for k in ("bleu", "bleu_lowercase", "bleu_tokenized", "chrf")]
    assert f"| test50 | {' | '.join(cells)} |" in summary
    assert (run_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tail = out.splitlines()[-9:]  # the table (header, 2 rows, 4 signatures), then the model
    assert any(line.startswith("test50") and f"{scores['bleu']['score']:.2f}" in line for line in tail)
    assert tail[-1].startswith(f"model:  {model}")


def test_a_second_run_skips_every_finished_stage(finished_run):
    run_dir, _, recipe, _, _ = finished_run
    before = _outputs(run_dir)
    code, out, err = run_cli(["run", str(recipe), "-o", str(run_dir)])
    assert code == 0, out + err
    assert _stage_lines(out, "run") == set()
    assert _stage_lines(out, "skip") == ALL_STAGES | {"data"}
    assert _outputs(run_dir) == before  # nothing rewritten
    assert "test50" in out and f"model:  {run_dir / 'model'}" in out


def test_changed_decoding_redoes_only_what_follows_training(finished_run, tmp_path):
    # on a copy: the shared run stays as the other tests expect it, whatever their order
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], run_dir, symlinks=True)
    recipe = finished_run[2]
    checkpoint = run_dir / "checkpoints" / "checkpoint-00000012" / "model.safetensors"
    weights = (run_dir / "model" / "model.safetensors").stat().st_mtime_ns, checkpoint.stat().st_mtime_ns
    code, out, err = run_cli(["run", str(recipe), "-o", str(run_dir), "--set", "eval.beam_size=1"])
    assert code == 0, out + err
    assert _stage_lines(out, "run") == {"translate-test50", "evaluate-test50", "translate-test10", "evaluate-test10",
                                        "card", "report"}
    assert ((run_dir / "model" / "model.safetensors").stat().st_mtime_ns, checkpoint.stat().st_mtime_ns) == weights


def test_changed_training_of_a_finished_run_is_refused(finished_run):
    run_dir, _, recipe, _, _ = finished_run
    code, out, err = run_cli(["run", str(recipe), "-o", str(run_dir), "--set", "train.lr=0.001"])
    assert code == 2
    assert "error:" in err and "train.lr=0.005 (the recipe now says 0.001)" in err and "--output-dir" in err
    assert "Traceback" not in err


def test_every_search_option_changes_what_a_translation_depends_on():
    """`txkit run` re-translates when any search option changes: the keys come from SearchOptions' fields, so
    a search option added there (one line) is covered here and by the stage without another list."""
    import dataclasses
    import typing

    from txkit.options import DecodeOptions, SearchOptions
    from txkit.pipeline import RunMarkers
    from txkit.pipeline_eval import translate_inputs
    from txkit.recipe import EvalSection, Recipe, load_recipe

    assert issubclass(EvalSection, SearchOptions) and issubclass(DecodeOptions, SearchOptions)
    base = translate_inputs(RunMarkers(Recipe(), Path("run"), print), "multi30k/test2016")
    hints = typing.get_type_hints(SearchOptions)
    for f in dataclasses.fields(SearchOptions):
        tp, default = hints[f.name], getattr(SearchOptions(), f.name)
        if typing.get_origin(tp) is typing.Literal:
            changed = next(a for a in typing.get_args(tp) if a != default)
        else:
            changed = not default if tp is bool else default + 1
        recipe = load_recipe(None, [f"eval.{f.name}={changed}"])
        inputs = translate_inputs(RunMarkers(recipe, Path("run"), print), "multi30k/test2016")
        assert inputs != base, f"eval.{f.name} does not re-translate"
    recipe = load_recipe(None, ["eval.lowercase=true"])  # scoring, not searching: the translation stays
    assert translate_inputs(RunMarkers(recipe, Path("run"), print), "multi30k/test2016") == base


def test_finished_runs_stay_valid_under_the_multi_corpus_keys_at_their_defaults():
    """data.train's list form and data.eval_tag are newer than existing runs: at their defaults (a string, no tag)
    the training and translation inputs recorded in the stage markers are what they were, so a finished run is
    neither refused nor redone; set, they are recorded."""
    from txkit.pipeline import RunMarkers, _train_inputs
    from txkit.pipeline_eval import translate_inputs
    from txkit.recipe import load_recipe

    plain = RunMarkers(load_recipe(None), Path("run"), print)
    assert _train_inputs(plain)["data.train"] == "multi30k/train"
    assert "data.eval_tag" not in _train_inputs(plain) and "data.eval_tag" not in translate_inputs(plain, "t")
    tagged = load_recipe(None, ['data.train=[{path: multi30k/train, tag: "<2de>"}]', "data.eval_tag=<2de>"])
    run = RunMarkers(tagged, Path("run"), print)
    assert _train_inputs(run)["data.eval_tag"] == "<2de>" and translate_inputs(run, "t")["data.eval_tag"] == "<2de>"
    assert _train_inputs(run)["data.train"][0]["tag"] == "<2de>"


# ----------------------------------------------------------------------------- a multilingual recipe: every direction

MULTI_SETS = ["--set", ('data.train=[{path: multi30k/train, tag: "<2de>", tgt_lang: de}, '
                       '{path: multi30k/train, tag: "<2fr>", tgt_lang: fr}]'), "--set", "data.eval_tag=<2de>",
              "--set", "data.max_sentences=200", "--set", "eval.average_last=1", "--set", "train.keep_last=1"]  # fmt: skip


@pytest.fixture(scope="module")
def multilingual_run(workspace, tmp_path_factory):
    """A finished en->de + en->fr run whose recipe scored en->de only (as the multilingual recipe did before every
    direction was scored), made with train.max_steps 6."""
    _, data, recipe = workspace
    for lang in ("en", "de", "fr"):
        lines = (data / "multi30k" / f"test2016.{lang}").read_text(encoding="utf-8").splitlines()[:20]
        (data / "slice" / f"test20.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    run_dir = tmp_path_factory.mktemp("multilingual") / "run"
    first = run_cli(["run", str(recipe), "-o", str(run_dir), *MULTI_SETS, "--set", "train.max_steps=6",
                     "--set", "eval.test=[{path: slice/test20, tgt_lang: de}]"])  # fmt: skip
    assert first[0] == 0, first[1] + first[2]
    return run_dir, data, recipe, first


def test_a_multilingual_run_scores_every_direction_without_retraining(multilingual_run):
    import yaml

    run_dir, data, recipe, (_, out1, _) = multilingual_run
    assert _stage_lines(out1, "run") >= {"train", "translate-test20.en-de", "evaluate-test20.en-de"}
    assert not (run_dir / "eval" / "test20.en-fr.json").exists()
    # what the recipe scored before this feature: RUN/eval/test20.json and its marker (the old names)
    shutil.copy(run_dir / "eval" / "test20.en-de.json", run_dir / "eval" / "test20.json")
    marker = json.loads((run_dir / "stages" / "evaluate-test20.en-de.done").read_text())
    (run_dir / "stages" / "evaluate-test20.done").write_text(json.dumps({**marker, "outputs": ["eval/test20.json"]}))
    weights = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.safetensors")}
    tokenizer = (run_dir / "tokenizer" / "tokenizer.json").stat().st_mtime_ns

    # the same run, the test set now plain: scored in every direction the recipe trains
    code, out, err = run_cli(["run", str(recipe), "-o", str(run_dir), *MULTI_SETS, "--set", "train.max_steps=6",
                              "--set", "eval.test=[slice/test20]"])  # fmt: skip
    assert code == 0, out + err
    assert _stage_lines(out, "run") == {"translate-test20.en-fr", "evaluate-test20.en-fr", "card", "report"}
    assert {"tokenizer", "train", "average", "translate-test20.en-de"} <= _stage_lines(out, "skip")
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.safetensors")} == weights
    assert (run_dir / "tokenizer" / "tokenizer.json").stat().st_mtime_ns == tokenizer
    assert not (run_dir / "eval" / "test20.json").exists() and "removed" in out  # the old name is gone

    reports = {d: json.loads((run_dir / "eval" / f"test20.en-{d}.json").read_text()) for d in ("de", "fr")}
    for lang, report in reports.items():
        assert report["references"][0]["path"] == str(data / "slice" / f"test20.{lang}")
        assert report["languages"] == ["en", lang] and report["tag"] == f"<2{lang}>"
        assert report["dataset"]["name"] == f"slice test20 en-{lang}"
    hyps = {d: (run_dir / "translations" / f"test20.{d}").read_text(encoding="utf-8").splitlines() for d in ("de", "fr")}
    assert len(hyps["fr"]) == 20 and hyps["fr"] != hyps["de"]  # the tag reached the model
    import sacrebleu

    refs = (data / "slice" / "test20.fr").read_text(encoding="utf-8").splitlines()
    assert reports["fr"]["scores"]["bleu"]["score"] == pytest.approx(sacrebleu.corpus_bleu(hyps["fr"], [refs]).score)
    # the model card and the report list each direction; the card's model-index names each pair
    card = (run_dir / "model" / "README.md").read_text(encoding="utf-8")
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["language"] == ["en", "de", "fr"] and "(en → de, fr)" in card
    configs = {r["dataset"]["name"]: r["dataset"]["config"] for r in meta["model-index"][0]["results"]}
    assert configs == {"slice test20 en-de": "en-de", "slice test20 en-fr": "en-fr"}
    summary = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "| test20.en-de |" in summary and "| test20.en-fr |" in summary and "| test20 |" not in summary
    assert any(line.startswith("test20.en-fr") for line in out.splitlines())  # the scores table printed at the end


def test_a_test_set_in_a_direction_the_model_was_not_trained_for_is_refused(multilingual_run):
    run_dir, _, recipe, _ = multilingual_run
    code, _, err = run_cli(["run", str(recipe), "-o", str(run_dir), *MULTI_SETS,
                            "--set", 'eval.test=[{path: slice/test20, tag: "<2cs>"}]'])  # fmt: skip
    assert code == 2 and "Traceback" not in err
    assert "eval.test[0]: the model is not trained for the tag <2cs> (data.train's directions: en->de <2de>, " \
           "en->fr <2fr>)" in err
