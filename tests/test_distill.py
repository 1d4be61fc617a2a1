"""Sequence-level distillation (txkit/distill.py, `txkit run`'s distill stage) with real parts: a small teacher
trained on Multi30k en-de (the suite's trained model, conftest.py), a student recipe that distills a slice of Multi30k from it end to end, the
translated training set cached and reused, and invalidated when the teacher's weights change."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO, run_cli

SENTENCES = 60  # data.max_sentences: the teacher translates this many training sources

STUDENT = """\
model:
  preset: transformer-tiny
  d_model: 16
  encoder_layers: 1
  decoder_layers: 1
  attention_heads: 2
  ffn_dim: 32
  max_position_embeddings: 128
tokenizer:
  vocab_size: 600
data:
  train: multi30k/train
  valid: ''
  src_lang: en
  tgt_lang: de
  max_len: 64
  max_sentences: 60
distill:
  teacher: {teacher}
  beam_size: 2
  max_len_b: 10
train:
  max_steps: 4
  max_tokens: 384
  lr_schedule: inverse_sqrt
  warmup_steps: 2
  save_every_steps: 2
  save_every_minutes: 0
  keep_last: 2
  eval_every_steps: 0
  log_every_steps: 2
eval:
  beam_size: 2
  max_len_b: 10
  average_last: 2
  test: [slice/test10]
"""


def _stages(out: str, verb: str) -> set[str]:
    return {line.split(":")[0].split()[1] for line in out.splitlines() if line.startswith(f"{verb} ")}


@pytest.fixture(scope="module")
def workspace(shared_data, trained_model, tmp_path_factory):
    """$TXKIT_DATA (Multi30k linked, a 10-sentence test set), the teacher (a copy of the suite's trained model:
    2+2 layers, d_model 64, 200 steps on Multi30k en-de) and the student recipe naming it."""
    root = tmp_path_factory.mktemp("distill")
    data = root / "data"
    (data / "slice").mkdir(parents=True)
    (data / "multi30k").symlink_to(shared_data / "multi30k")
    for lang in ("en", "de"):
        lines = (shared_data / "multi30k" / f"test2016.{lang}").read_text(encoding="utf-8").splitlines()[:10]
        (data / "slice" / f"test10.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    teacher = shutil.copytree(trained_model, root / "teacher")
    recipe = root / "student.yaml"
    recipe.write_text(STUDENT.format(teacher=teacher), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TXKIT_DATA", str(data))
        yield root, data, teacher, recipe


@pytest.fixture(scope="module")
def distilled(workspace):
    root, _, _, recipe = workspace
    run_dir = root / "run"
    result = run_cli(["run", str(recipe), "-o", str(run_dir)])
    return run_dir, result


def _key_folders(run_dir: Path) -> list[Path]:
    return sorted(p for p in (run_dir / "distill").iterdir() if p.is_dir())


def test_the_student_trains_on_the_teachers_translations_and_is_scored(workspace, distilled, capsys):
    _, data, teacher, _ = workspace
    run_dir, (code, out, err) = distilled
    assert code == 0, out + err
    assert _stages(out, "run") == {"tokenizer", "distill", "train", "average", "translate-test10", "evaluate-test10",
                                   "card", "report"}  # fmt: skip
    [folder] = _key_folders(run_dir)
    sources = (folder / "train0.en").read_text(encoding="utf-8").splitlines()
    original = (data / "multi30k" / "train.en").read_text(encoding="utf-8").splitlines()[:SENTENCES]
    assert sources == original
    # the German side is the teacher's beam search of those sources, exactly as `txkit translate` gives it
    code, translated, _ = run_cli(["translate", str(teacher), "-i", str(folder / "train0.en"), "--beam-size", "2",
                                   "--max-len-b", "10"], capsys)  # fmt: skip
    assert code == 0
    assert (folder / "train0.de").read_text(encoding="utf-8").splitlines() == translated.splitlines()
    human = (data / "multi30k" / "train.de").read_text(encoding="utf-8").splitlines()[:SENTENCES]
    assert translated.splitlines() != human
    record = json.loads((folder / "distill.json").read_text())
    assert record["teacher"] == str(teacher)
    # the student trained on them: its resolved recipe reads the distilled files, and `txkit train` could rerun it
    import yaml

    trained = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert trained["data"]["train"] == str(folder / "train0") and trained["distill"]["teacher"] == ""
    assert json.loads((run_dir / "model" / "config.json").read_text())["d_model"] == 16
    # scored against the human references; the card names the corpus it came from, not the cache folder
    report = json.loads((run_dir / "eval" / "test10.json").read_text())
    assert report["references"][0]["path"] == str(data / "slice" / "test10.de")
    card = (run_dir / "model" / "README.md").read_text(encoding="utf-8")
    assert "- multi30k" in card and folder.name not in card.split("---")[1]
    assert f"Sequence-level distillation: trained on the translations of data.train's sources by the teacher `{teacher}`" in card


def test_a_second_run_reuses_the_translations_whatever_the_teachers_path(workspace, distilled, tmp_path):
    _, _, teacher, recipe = workspace
    run_dir = distilled[0]
    [folder] = _key_folders(run_dir)
    before = (folder / "train0.de").stat().st_mtime_ns
    moved = tmp_path / "teacher-copy"
    shutil.copytree(teacher, moved)  # the same weights found elsewhere: the same key
    code, out, err = run_cli(["run", str(recipe), "-o", str(run_dir), "--set", f"distill.teacher={moved}"])
    assert code == 0, out + err
    assert _stages(out, "run") == set() and {"distill", "train"} <= _stages(out, "skip")
    assert _key_folders(run_dir) == [folder] and (folder / "train0.de").stat().st_mtime_ns == before


def _retrained_teacher(teacher: Path, where: Path) -> Path:
    """A copy of the teacher with other weights (as if trained further): its weights perturbed."""
    import torch
    from safetensors.torch import load_file, save_file

    copy = shutil.copytree(teacher, where)
    weights = copy / "model.safetensors"
    tensors = load_file(weights)
    generator = torch.Generator().manual_seed(0)
    save_file({k: v + 0.5 * torch.randn(v.shape, generator=generator) for k, v in tensors.items()}, weights,
              metadata={"format": "pt"})  # fmt: skip
    return copy


def test_a_changed_teacher_translates_again_and_a_finished_student_is_not_retrained(workspace, distilled, tmp_path):
    _, _, teacher, recipe = workspace
    run_dir = distilled[0]
    [old] = _key_folders(run_dir)
    changed = _retrained_teacher(teacher, tmp_path / "teacher-2")

    # a finished student: refused, before the teacher spends any time translating
    code, out, err = run_cli(["run", str(recipe), "-o", str(run_dir), "--set", f"distill.teacher={changed}"])
    assert code == 2 and "Traceback" not in err
    assert "finished training with distill=" in err and "choose another --output-dir" in err
    assert "run  distill" not in out and _key_folders(run_dir) == [old]

    # a run whose cache holds the first teacher's translations: the same teacher reuses them, without a marker
    other = tmp_path / "run"
    shutil.copytree(run_dir / "distill", other / "distill")
    stop = ["--set", "train.stop_after_steps=1"]
    code, out, err = run_cli(["run", str(recipe), "-o", str(other), *stop])
    assert code == 1, out + err  # training stopped on purpose after the distill stage
    assert "run  distill" in out and "reused" in out and _key_folders(other) == [other / "distill" / old.name]
    # the changed teacher: translated again, the stale translations removed
    code, out, err = run_cli(["run", str(recipe), "-o", str(other), "--set", f"distill.teacher={changed}", *stop])
    assert "run  distill" in out and "reused" not in out, out + err
    [new] = _key_folders(other)
    assert new.name != old.name and f"removed {other / 'distill' / old.name}" in out
    assert (new / "train0.en").read_text() == (old / "train0.en").read_text()
    assert (new / "train0.de").read_text() != (old / "train0.de").read_text()


def test_an_interrupted_translation_keeps_its_finished_chunks(workspace, monkeypatch, tmp_path):
    """The teacher's translation is saved chunk by chunk: stopped after the first chunk, the next run translates
    only the rest, and the result is the uninterrupted one."""
    from txkit import distill
    from txkit.recipe import load_recipe

    _, data, teacher, recipe_file = workspace
    monkeypatch.setenv("TXKIT_DATA", str(data))
    monkeypatch.setattr(distill, "CHUNK_LINES", 25)
    recipe = load_recipe(recipe_file)
    folder_of = distill.resolve_teacher(str(teacher))
    corpora = distill.plan(recipe, folder_of)

    def stop_after_first(message: str) -> None:
        raise KeyboardInterrupt(message)

    target = tmp_path / "a" / "key"
    with pytest.raises(KeyboardInterrupt, match="25/60"):
        distill.translate_corpora(recipe, folder_of, corpora, target, echo=stop_after_first)
    assert not target.exists() and len(list(target.with_name("key.partial").glob("train0-*.de"))) == 1
    said: list[str] = []
    distill.translate_corpora(recipe, folder_of, corpora, target, echo=said.append)
    assert [m.split(":")[1].split()[0] for m in said] == ["50/60", "60/60"]  # the first chunk was kept
    whole = tmp_path / "b" / "key"
    distill.translate_corpora(recipe, folder_of, corpora, whole, echo=lambda m: None)
    assert (target / "train0.de").read_text() == (whole / "train0.de").read_text()
    assert not target.with_name("key.partial").exists()


def test_original_targets_are_mixed_in_by_weight(workspace, tmp_path):
    from txkit import distill
    from txkit.recipe import load_recipe

    _, _, teacher, recipe_file = workspace
    recipe = load_recipe(recipe_file, ["distill.original_weight=0.5"])
    corpora = distill.plan(recipe, distill.resolve_teacher(str(teacher)))
    student = distill.distilled_recipe(recipe, tmp_path / "k", corpora)
    assert [(e["path"], e["weight"]) for e in student.data.train] == [(str(tmp_path / "k" / "train0"), 1.0),
                                                                      ("multi30k/train", 0.5)]  # fmt: skip
    assert distill.distilled_recipe(load_recipe(recipe_file), tmp_path / "k", corpora).data.train == str(
        tmp_path / "k" / "train0")  # one corpus: the plain string form, read as one corpus always is


def test_a_multilingual_teacher_translates_with_its_tag_for_the_direction(tmp_path):
    """plan() reads the teacher's recipe.yaml: an en->xx teacher translates an en->fr corpus with <2fr>."""
    from txkit import distill
    from txkit.recipe import load_recipe

    teacher = tmp_path / "model"
    teacher.mkdir()
    shutil.copy(REPO / "recipes" / "multi30k-en-xx" / "transformer-tiny.yaml", teacher / "recipe.yaml")
    recipe = load_recipe(None, ["data.train=multi30k/train", "data.tgt_lang=fr", f"distill.teacher={teacher}"])
    assert [c.teacher_tag for c in distill.plan(recipe, teacher)] == ["<2fr>"]
    recipe = load_recipe(None, ["data.train=multi30k/train", "data.tgt_lang=es"])
    with pytest.raises(Exception, match=r"it was trained for en->de <2de>, en->fr <2fr>, en->cs <2cs>, not "
                                        r"data\.train\[0\]'s en->es"):  # fmt: skip
        distill.plan(recipe, teacher, str(teacher))
