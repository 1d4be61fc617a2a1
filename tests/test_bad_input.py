"""Faulty input through the real CLI, one table row per case: every command, real files, real signals.

Each case builds its files in a fresh folder, snapshots every file under it (sha256), runs `txkit ARGS`
through the console entry point and then checks: the exit status; no "Traceback"; a message naming the
file, line or key at fault; every file that existed before is byte-identical (outputs a case declares as
the command's own are exempt); and no temporary file is left behind. A new command adds its own rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from conftest import REPO, head

RECIPE = REPO / "tests" / "recipes" / "tiny.yaml"


# ----------------------------------------------------------------------------- shared fixtures


@dataclass
class Fixtures:
    data: Path  # TXKIT_DATA: the shared corpora
    text: Path  # folder with small slices: train.en/de (300 lines), test.en/de (20 lines)
    run: Path  # a trained run: checkpoints at steps 2 and 4, log.jsonl, its tokenizer
    model: Path  # a model folder (checkpoint 4 without its training state)

    def checkpoint(self, step: int) -> Path:
        return self.run / "checkpoints" / f"checkpoint-{step:08d}"


@pytest.fixture(scope="module")
def fx(shared_data, tmp_path_factory) -> Fixtures:
    """One tiny training run (4 updates, 2 checkpoints) shared by every case; nothing here is modified."""
    from txkit.cli import main

    root = tmp_path_factory.mktemp("bad-input")
    text = root / "text"
    text.mkdir()
    for lang in ("en", "de"):
        head(shared_data / "multi30k" / f"train.{lang}", text / f"train.{lang}", 300)
        head(shared_data / "multi30k" / f"test2016.{lang}", text / f"test.{lang}", 20)
    run = root / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TXKIT_DATA", str(shared_data))
        with pytest.raises(SystemExit) as exc:
            main(["train", str(RECIPE), "-o", str(run), "--set", "train.max_steps=4", "--set", "train.save_every_steps=2",
                  "--set", "train.eval_every_steps=0", "--set", "data.valid=", "--set", "train.log_every_steps=1"])  # fmt: skip
        assert not exc.value.code
    model = root / "model"
    shutil.copytree(run / "checkpoints" / "checkpoint-00000004", model, ignore=shutil.ignore_patterns("training_state"))
    return Fixtures(data=shared_data, text=text, run=run, model=model)


# ----------------------------------------------------------------------------- helpers to build a case


def copy(src: Path, dst: Path) -> Path:
    (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    return dst


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def edit_json(path: Path, **changes) -> None:
    content = json.loads(path.read_text(encoding="utf-8"))
    content.update(changes)
    path.write_text(json.dumps(content, indent=2), encoding="utf-8")


def swap_two_tokens(tokenizer_json: Path) -> None:
    """Same size, different vocabulary: what a checkpoint trained with another tokenizer looks like."""
    content = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    vocab = content["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    tokenizer_json.write_text(json.dumps(content), encoding="utf-8")


def model(case: Path, fx: Fixtures, name: str = "m") -> Path:
    return copy(fx.model, case / name)


def _other_vocabulary(case: Path, fx: Fixtures) -> Path:
    """A second model folder m2 whose vocabulary has two tokens swapped (an ensemble must refuse it)."""
    folder = model(case, fx, "m2")
    swap_two_tokens(folder / "tokenizer.json")
    return folder


def run_copy(case: Path, fx: Fixtures) -> Path:
    return copy(fx.run, case / "run")


def text(case: Path, fx: Fixtures, name: str, lang: str = "en", split: str = "test") -> Path:
    return copy(fx.text / f"{split}.{lang}", case / name)


def latin1(case: Path, name: str = "latin1.txt") -> Path:
    path = case / name
    path.write_bytes("A first line\nCaf\xe9 au lait\n".encode("latin-1"))
    return path


def recipe(case: Path, body: str) -> Path:
    path = case / "recipe.yaml"
    path.write_text(body, encoding="utf-8")
    return path


def corpus_recipe(case: Path, train: str) -> Path:
    """The tiny test recipe, reading data.train from `train` (absolute), no validation."""
    body = RECIPE.read_text(encoding="utf-8").replace("train: multi30k/train", f"train: {train}")
    return recipe(case, body.replace("valid: multi30k/val", "valid: ''"))


def hardlink(src: Path, dst: Path) -> Path:
    os.link(src, dst)
    return dst


def symlink(src: Path, dst: Path) -> Path:
    dst.symlink_to(src)
    return dst


def user_folder(path: Path) -> Path:
    path.mkdir()
    (path / "mine.txt").write_text("a user's file\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- the table


@dataclass
class Case:
    id: str
    build: Callable[[Path, Fixtures], list]  # makes the case's files under its folder; returns the arguments
    message: str  # regex the output must contain (naming the file, line or key)
    code: int = 2
    owned: list = field(default_factory=list)  # paths (relative to the case folder) the command may rewrite
    absent: str | None = None  # regex the output must not contain
    env: dict = field(default_factory=dict)  # environment variables set for the command


T, CK = "train", "checkpoints"
CASES = [
    # --- txkit tokenizer build
    Case("build-out-is-a-file", lambda c, f: ["tokenizer", "build", str(text(c, f, "a.en")), "--out", str(text(c, f, "b.en")), "-q"],
         r"--out .*b\.en: exists and is not a folder"),
    Case("build-out-is-an-input", lambda c, f: ["tokenizer", "build", str(text(c, f, "a.en")), "--out", str(c / "a.en"), "-q"],
         r"--out .*a\.en: exists and is not a folder"),
    Case("build-out-is-a-user-folder", lambda c, f: ["tokenizer", "build", str(text(c, f, "a.en")), "--out", str(user_folder(c / "tok")), "-q"],
         r"--out .*tok: exists and is not a tokenizer folder"),
    Case("build-out-under-a-file", lambda c, f: ["tokenizer", "build", str(text(c, f, "a.en")), "--out", str(text(c, f, "b.en") / "tok"), "-q"],
         r"--out .*b\.en/tok: .*b\.en is not a folder"),
    Case("build-empty-training-file", lambda c, f: ["tokenizer", "build", str(recipe(c, "\n\n")), "--out", str(c / "tok"), "-q"],
         r"recipe\.yaml: empty training file"),
    Case("build-missing-file", lambda c, f: ["tokenizer", "build", str(c / "nope.en"), "--out", str(c / "tok"), "-q"],
         r"nope\.en: no such file"),
    Case("build-directory-as-file", lambda c, f: ["tokenizer", "build", str(user_folder(c / "d")), "--out", str(c / "tok"), "-q"],
         r"/d: is a directory"),
    Case("build-gzip-file", lambda c, f: ["tokenizer", "build", str(_gzip(c)), "--out", str(c / "tok"), "-q"],
         r"train\.gz: unknown format \(a gzip file\)"),
    Case("build-not-utf8", lambda c, f: ["tokenizer", "build", str(latin1(c)), "--out", str(c / "tok"), "-q"],
         r"latin1\.txt line 2: not valid UTF-8 \(byte 0xe9\)"),
    Case("build-vocab-too-small", lambda c, f: ["tokenizer", "build", str(text(c, f, "a.en")), "--out", str(c / "tok"), "--vocab-size", "20"],
         r"vocab size 20 is too small"),
    # --- txkit tokenizer stats / encode
    Case("stats-no-tokenizer", lambda c, f: ["tokenizer", "stats", str(user_folder(c / "tok")), str(text(c, f, "a.en"))],
         r"tok: not a tokenizer folder \(no tokenizer\.json\)"),
    Case("stats-truncated-tokenizer", lambda c, f: ["tokenizer", "stats", str(_cut(model(c, f), "tokenizer.json")), str(text(c, f, "a.en"))],
         r"m/tokenizer\.json: not valid tokenizer JSON"),
    Case("stats-json-not-a-tokenizer", lambda c, f: ["tokenizer", "stats", str(_json(model(c, f), "tokenizer.json", {"a": 1})), str(text(c, f, "a.en"))],
         r"m/tokenizer\.json: not a tokenizer file"),
    Case("stats-missing-text", lambda c, f: ["tokenizer", "stats", str(model(c, f)), str(c / "nope.en")],
         r"nope\.en: no such file"),
    Case("encode-missing-corpus", lambda c, f: ["tokenizer", "encode", str(model(c, f)), str(c / "nope")],
         r"nope\.en"),
    # --- txkit translate
    Case("translate-unknown-tag", lambda c, f: ["translate", str(model(c, f)), "-i", str(text(c, f, "f.txt")), "--tag", "<2de>"],
         r"--tag <2de>: not a tag of .*m's tokenizer \(its tags: none: it was trained without tags\)"),
    Case("translate-untrained-direction", lambda c, f: ["translate", str(run_copy(c, f)), "-i", str(text(c, f, "f.txt")), "--target-lang", "fr"],
         r"--target-lang fr: .*run.* was not trained to translate into fr \(its target languages: de\)"),
    Case("translate-target-lang-and-tag", lambda c, f: ["translate", str(model(c, f)), "-i", str(text(c, f, "f.txt")), "--target-lang", "de", "--tag", "<2de>"],
         r"--target-lang and --tag both pick the direction: give one of them"),
    Case("translate-output-is-input", lambda c, f: ["translate", str(model(c, f)), "-i", str(text(c, f, "f.txt")), "-o", str(c / "f.txt")],
         r"--output .*f\.txt: is the same file as --input"),
    Case("translate-output-hardlink-of-input", lambda c, f: ["translate", str(model(c, f)), "-i", str(text(c, f, "f.txt")), "-o", str(hardlink(c / "f.txt", c / "g.txt"))],
         r"--output .*g\.txt: is the same file as --input .*f\.txt"),
    Case("translate-output-symlink-to-input", lambda c, f: ["translate", str(model(c, f)), "-i", str(text(c, f, "f.txt")), "-o", str(symlink(c / "f.txt", c / "g.txt"))],
         r"--output .*g\.txt: is the same file as --input"),
    Case("translate-output-is-model-file", lambda c, f: ["translate", str(model(c, f)), "-i", str(text(c, f, "f.txt")), "-o", str(c / "m" / "config.json")],
         r"--output .*config\.json: lies inside MODEL"),
    Case("translate-output-is-a-folder", lambda c, f: ["translate", str(model(c, f)), "-i", str(text(c, f, "f.txt")), "-o", str(user_folder(c / "out"))],
         r"--output .*out: is a directory"),
    Case("translate-output-folder-missing", lambda c, f: ["translate", str(model(c, f)), "-i", str(text(c, f, "f.txt")), "-o", str(c / "no" / "out.txt")],
         r"--output .*out\.txt: the folder .*no does not exist"),
    Case("translate-output-under-a-file", lambda c, f: ["translate", str(model(c, f)), "-i", str(text(c, f, "f.txt")), "-o", str(c / "f.txt" / "out.txt")],
         r"--output .*out\.txt: .*f\.txt is not a folder"),
    Case("translate-input-is-a-folder", lambda c, f: ["translate", str(model(c, f)), "-i", str(user_folder(c / "d"))],
         r"--input .*d: is a directory"),
    Case("translate-input-missing", lambda c, f: ["translate", str(model(c, f)), "-i", str(c / "nope.txt")],
         r"input file not found: .*nope\.txt"),
    Case("translate-input-not-utf8", lambda c, f: ["translate", str(model(c, f)), "-i", str(latin1(c)), "-o", str(c / "out.txt")],
         r"latin1\.txt line 2: not valid UTF-8"),
    Case("translate-ctranslate2-ensemble", lambda c, f: ["translate", str(model(c, f)), str(c / "m"), "-i", str(text(c, f, "f.txt")), "--engine", "ctranslate2", "--lp-form", "hf"],
         r"--engine ctranslate2 translates with one model"),
    Case("translate-threads-zero", lambda c, f: ["translate", str(model(c, f)), "-i", str(text(c, f, "f.txt")), "--threads", "0"],
         r"--threads: the number of threads must be at least 1, not 0"),
    Case("translate-txkit-threads-not-a-number", lambda c, f: ["translate", str(model(c, f)), "-i", str(text(c, f, "f.txt"))],
         r"TXKIT_THREADS='two': expected a whole number of threads", env={"TXKIT_THREADS": "two"}),
    Case("translate-device-gpu", lambda c, f: ["translate", str(model(c, f)), "-i", str(text(c, f, "f.txt")), "--device", "gpu"],
         r"--device gpu: unknown device"),
    Case("translate-device-cuda7", lambda c, f: ["translate", str(model(c, f)), "-i", str(text(c, f, "f.txt")), "--device", "cuda:7"],
         r"--device cuda:7: (this machine has no CUDA GPU|there is no such GPU)"),
    Case("translate-engine-unknown", lambda c, f: ["translate", str(model(c, f)), "-i", str(text(c, f, "f.txt")), "--engine", "onnx"],
         r"--engine onnx: unknown engine \(choose auto, txkit or ctranslate2\)"),
    Case("translate-quantize-unknown", lambda c, f: ["translate", str(model(c, f)), "-i", str(text(c, f, "f.txt")), "--quantize", "int4"],
         r"--quantize int4: unknown quantization \(choose none or int8\)"),
    Case("translate-ctranslate2-gnmt-form", lambda c, f: ["translate", str(model(c, f)), "-i", str(text(c, f, "f.txt")), "--engine", "ctranslate2"],
         r"--lp-form gnmt: CTranslate2 has only the hf length-penalty form"),
    Case("translate-ctranslate2-sampling", lambda c, f: ["translate", str(model(c, f)), "-i", str(text(c, f, "f.txt")), "--engine", "ctranslate2", "--lp-form", "hf", "--sample"],
         r"--sample: CTranslate2 cannot seed each sentence's draws"),
    Case("translate-ctranslate2-bf16", lambda c, f: ["translate", str(model(c, f)), "-i", str(text(c, f, "f.txt")), "--engine", "ctranslate2", "--lp-form", "hf", "--dtype", "bf16"],
         r"--dtype bf16: use --quantize int8 with --engine ctranslate2"),
    Case("translate-ctranslate2-max-sentences", lambda c, f: ["translate", str(model(c, f)), "-i", str(text(c, f, "f.txt")), "--engine", "ctranslate2", "--lp-form", "hf", "--max-sentences", "8"],
         r"--max-sentences: CTranslate2 batches by --max-tokens only"),
    Case("eval-engine-unknown", lambda c, f: ["eval", str(model(c, f)), "--src", str(text(c, f, "s.en")), "--ref", str(text(c, f, "r.de", "de")), "--engine", "onnx"],
         r"--engine onnx: unknown engine \(choose auto, txkit or ctranslate2\)"),
    Case("eval-lp-form-unknown", lambda c, f: ["eval", str(model(c, f)), "--src", str(text(c, f, "s.en")), "--ref", str(text(c, f, "r.de", "de")), "--lp-form", "x"],
         r"unknown length-penalty form 'x' \(choose gnmt or hf\)"),
    Case("eval-engine-with-hyp", lambda c, f: ["eval", "--hyp", str(text(c, f, "h.de", "de")), "--ref", str(text(c, f, "r.de", "de")), "--engine", "ctranslate2"],
         r"--engine and --hyp-out only apply to the MODEL form"),
    Case("eval-ctranslate2-gnmt-form", lambda c, f: ["eval", str(model(c, f)), "--src", str(text(c, f, "s.en")), "--ref", str(text(c, f, "r.de", "de")), "--engine", "ctranslate2"],
         r"--lp-form gnmt: CTranslate2 has only the hf length-penalty form"),
    Case("translate-int8-of-bf16", lambda c, f: ["translate", str(model(c, f)), "-i", str(text(c, f, "f.txt")), "--quantize", "int8", "--dtype", "bf16"],
         r"--quantize int8: quantizes float32 weights; drop --dtype bf16"),
    Case("train-recipe-ctranslate2-gnmt", lambda c, f: ["train", str(recipe(c, "data:\n  train: x\neval:\n  engine: ctranslate2\n")), "-o", str(c / "run")],
         r"eval\.engine ctranslate2 needs eval\.lp_form hf"),
    Case("train-recipe-engine-unknown", lambda c, f: ["train", str(recipe(c, "data:\n  train: x\neval:\n  engine: onnx\n")), "-o", str(c / "run")],
         r"eval\.engine must be one of auto, txkit, ctranslate2, not 'onnx'"),
    Case("translate-truncated-weights", lambda c, f: ["translate", str(_cut(model(c, f), "model.safetensors")), "-i", str(text(c, f, "f.txt"))],
         r"m/model\.safetensors: truncated"),
    Case("translate-empty-weights", lambda c, f: ["translate", str(_cut(model(c, f), "model.safetensors", 0)), "-i", str(text(c, f, "f.txt"))],
         r"m/model\.safetensors: truncated"),
    Case("translate-config-d-model-string", lambda c, f: ["translate", str(_json(model(c, f), "config.json", {"d_model": "128"})), "-i", str(text(c, f, "f.txt"))],
         r"m/config\.json: \"d_model\" must be an integer, not \"128\""),
    Case("translate-config-vocab-mismatch", lambda c, f: ["translate", str(_json(model(c, f), "config.json", {"vocab_size": 999})), "-i", str(text(c, f, "f.txt"))],
         r"m/config\.json: \"vocab_size\" is 999 but the embedding in .*model\.safetensors has \d+ rows"),
    Case("translate-config-truncated", lambda c, f: ["translate", str(_cut(model(c, f), "config.json")), "-i", str(text(c, f, "f.txt"))],
         r"m/config\.json: not valid JSON \(line \d+"),
    Case("translate-config-heads", lambda c, f: ["translate", str(_json(model(c, f), "config.json", {"attention_heads": 5})), "-i", str(text(c, f, "f.txt"))],
         r"m/config\.json: \"d_model\" \(32\) must be divisible by \"attention_heads\" \(5\)"),
    Case("translate-tokenizer-truncated", lambda c, f: ["translate", str(_cut(model(c, f), "tokenizer.json")), "-i", str(text(c, f, "f.txt"))],
         r"m/tokenizer\.json: not valid tokenizer JSON"),
    Case("translate-tokenizer-of-other-size", lambda c, f: ["translate", str(_other_size_tokenizer(c, f)), "-i", str(text(c, f, "f.txt"))],
         r"m/tokenizer\.json: has 400 tokens but the model's vocabulary is \d+"),
    Case("translate-ensemble-other-vocabulary", lambda c, f: ["translate", str(model(c, f)), str(_other_vocabulary(c, f)), "-i", str(text(c, f, "f.txt"))],
         r"m2: its target vocabulary differs from .*m's; the models of an ensemble must share one target vocabulary"),
    Case("eval-ensemble-other-vocabulary", lambda c, f: ["eval", str(model(c, f)), str(_other_vocabulary(c, f)), "--src", str(text(c, f, "s.en")), "--ref", str(text(c, f, "r.de", "de"))],
         r"m2: its target vocabulary differs from .*m's"),
    Case("translate-no-such-model", lambda c, f: ["translate", str(c / "nope"), "-i", str(text(c, f, "f.txt"))],
         r"nope: no such model folder, run directory or Hub id"),
    # --- txkit eval
    Case("eval-hyp-out-is-ref", lambda c, f: ["eval", str(model(c, f)), "--src", str(text(c, f, "s.en")), "--ref", str(text(c, f, "r.de", "de")), "--hyp-out", str(c / "r.de")],
         r"--hyp-out .*r\.de: is the same file as --ref"),
    Case("eval-hyp-out-is-src", lambda c, f: ["eval", str(model(c, f)), "--src", str(text(c, f, "s.en")), "--ref", str(text(c, f, "r.de", "de")), "--hyp-out", str(c / "s.en")],
         r"--hyp-out .*s\.en: is the same file as --src"),
    Case("eval-json-is-ref", lambda c, f: ["eval", "--hyp", str(text(c, f, "h.de", "de")), "--ref", str(text(c, f, "r.de", "de")), "--json", str(c / "r.de")],
         r"--json .*r\.de: is the same file as --ref"),
    Case("eval-json-is-hyp", lambda c, f: ["eval", "--hyp", str(text(c, f, "h.de", "de")), "--ref", str(text(c, f, "r.de", "de")), "--json", str(c / "h.de")],
         r"--json .*h\.de: is the same file as --hyp"),
    Case("eval-json-is-a-folder", lambda c, f: ["eval", "--hyp", str(text(c, f, "h.de", "de")), "--ref", str(text(c, f, "r.de", "de")), "--json", str(user_folder(c / "out"))],
         r"--json .*out: is a directory"),
    Case("eval-json-folder-missing", lambda c, f: ["eval", "--hyp", str(text(c, f, "h.de", "de")), "--ref", str(text(c, f, "r.de", "de")), "--json", str(c / "no" / "r.json")],
         r"--json .*r\.json: the folder .*no does not exist"),
    Case("eval-json-is-hyp-out", lambda c, f: ["eval", str(model(c, f)), "--src", str(text(c, f, "s.en")), "--ref", str(text(c, f, "r.de", "de")), "--hyp-out", str(c / "o.txt"), "--json", str(c / "o.txt")],
         r"--json .*o\.txt: is also the --hyp-out file"),
    Case("eval-line-counts-differ", lambda c, f: ["eval", "--hyp", str(text(c, f, "h.de", "de")), "--ref", str(text(c, f, "r.de", "de", "train"))],
         r"h\.de.*20.*r\.de.*300|r\.de.*300.*h\.de.*20"),
    Case("eval-hyp-missing", lambda c, f: ["eval", "--hyp", str(c / "nope.de"), "--ref", str(text(c, f, "r.de", "de"))],
         r"hypothesis file not found: .*nope\.de"),
    Case("eval-hyp-not-utf8", lambda c, f: ["eval", "--hyp", str(latin1(c)), "--ref", str(latin1(c, "r.txt"))],
         r"latin1\.txt line 2: not valid UTF-8|r\.txt line 2: not valid UTF-8"),
    Case("eval-model-truncated-weights", lambda c, f: ["eval", str(_cut(model(c, f), "model.safetensors")), "--src", str(text(c, f, "s.en")), "--ref", str(text(c, f, "r.de", "de"))],
         r"m/model\.safetensors: truncated"),
    # --- txkit average
    Case("average-out-is-an-input", lambda c, f: ["average", str(run_copy(c, f) / CK / "checkpoint-00000002"), str(c / "run" / CK / "checkpoint-00000004"), "--out", str(c / "run" / CK / "checkpoint-00000004")],
         r"--out .*checkpoint-00000004: is checkpoint .*checkpoint-00000004"),
    Case("average-out-contains-the-inputs", lambda c, f: ["average", "--last", "2", str(run_copy(c, f)), "--out", str(c / "run")],
         r"--out .*run: contains checkpoint"),
    Case("average-out-is-a-file", lambda c, f: ["average", "--last", "2", str(run_copy(c, f)), "--out", str(text(c, f, "f.txt"))],
         r"--out .*f\.txt: exists and is not a folder"),
    Case("average-different-tokenizers", lambda c, f: ["average", str(copy(f.checkpoint(2), c / "a")), str(_swapped(copy(f.checkpoint(4), c / "b"))), "--out", str(c / "avg")],
         r"b/tokenizer\.json differs from .*a/tokenizer\.json \(token \d+: .*\); checkpoints trained with different tokenizers"),
    Case("average-different-configs", lambda c, f: ["average", str(copy(f.checkpoint(2), c / "a")), str(_json(copy(f.checkpoint(4), c / "b"), "config.json", {"dropout": 0.3})), "--out", str(c / "avg")],
         r"b/config\.json: \"dropout\" is 0\.3 but 0\.1 in .*a"),
    Case("average-truncated-weights", lambda c, f: ["average", str(copy(f.checkpoint(2), c / "a")), str(_cut(copy(f.checkpoint(4), c / "b"), "model.safetensors")), "--out", str(c / "avg")],
         r"b/model\.safetensors: truncated"),
    Case("average-too-few-checkpoints", lambda c, f: ["average", "--last", "5", str(run_copy(c, f)), "--out", str(c / "avg")],
         r"run: asked for the last 5 checkpoints but the run has only 2"),
    Case("average-keeps-M-old-and-M-tmp", lambda c, f: [*_users_m_old_tmp(c), "average", "--last", "2", str(run_copy(c, f)), "--out", str(c / "M")],
         r"averaged 2 checkpoints", code=0),
    Case("average-replaces-its-own-model-folder", lambda c, f: ["average", "--last", "2", str(run_copy(c, f)), "--out", str(model(c, f, "M"))],
         r"averaged 2 checkpoints", code=0, owned=["M"]),
    # --- txkit export
    Case("export-out-is-the-model", lambda c, f: ["export", str(model(c, f)), "--out", str(c / "m"), "--overwrite"],
         r"--out .*m: is MODEL"),
    Case("export-out-inside-the-model", lambda c, f: ["export", str(model(c, f)), "--out", str(c / "m" / "marian")],
         r"--out .*marian: lies inside MODEL"),
    Case("export-ct2-is-out", lambda c, f: ["export", str(model(c, f)), "--out", str(c / "x"), "--ct2", str(c / "x")],
         r"--ct2 .*x: must be a folder apart from --out"),
    Case("export-config-wrong-type", lambda c, f: ["export", str(_json(model(c, f), "config.json", {"encoder_layers": "2"})), "--out", str(c / "x")],
         r"m/config\.json: \"encoder_layers\" must be an integer"),
    Case("export-truncated-weights", lambda c, f: ["export", str(_cut(model(c, f), "model.safetensors", 0.9)), "--out", str(c / "x")],
         r"m/model\.safetensors: truncated"),
    Case("export-keeps-a-user-folder", lambda c, f: ["export", str(model(c, f)), "--out", str(user_folder(c / "x"))],
         r"x: output folder exists and is not empty"),
    # --- txkit train
    Case("train-empty-recipe", lambda c, f: ["train", str(recipe(c, "# only a comment\n\n")), "-o", str(c / "run")],
         r"recipe\.yaml: the recipe is empty"),
    Case("train-recipe-without-data", lambda c, f: ["train", str(recipe(c, "train:\n  max_steps: 3\n")), "-o", str(c / "run")],
         r"recipe\.yaml: the recipe does not say what to train on: set data\.train"),
    Case("train-not-utf8-corpus", lambda c, f: ["train", str(_latin1_corpus(c)), "-o", str(c / "run")],
         r"corpus\.de line 2: not valid UTF-8 \(byte 0xe9\); training reads UTF-8 only", owned=["run"], absent=r"--errors"),
    Case("train-unknown-key", lambda c, f: ["train", str(recipe(c, "data:\n  train: x\ntrain:\n  warmup: 4\n")), "-o", str(c / "run")],
         r"recipe\.yaml: unknown key 'train\.warmup' \(did you mean 'train\.warmup_steps'\?\)"),
    Case("train-ema-decay-one", lambda c, f: ["train", str(RECIPE), "-o", str(c / "run"), "--set", "train.ema_decay=1"],
         r"tiny\.yaml: train\.ema_decay must lie in \(0, 1\) \(or be null or 0 for off\), not 1\.0"),
    Case("train-ema-decay-negative", lambda c, f: ["train", str(RECIPE), "-o", str(c / "run"), "--set", "train.ema_decay=-0.5"],
         r"train\.ema_decay must lie in \(0, 1\)"),
    Case("train-ema-decay-not-a-number", lambda c, f: ["train", str(RECIPE), "-o", str(c / "run"), "--set", "train.ema_decay=high"],
         r"train\.ema_decay must be a number, not 'high'"),
    Case("train-bpe-dropout-one", lambda c, f: ["train", str(RECIPE), "-o", str(c / "run"), "--set", "tokenizer.dropout=1"],
         r"tiny\.yaml: tokenizer\.dropout must lie in \[0, 1\), not 1\.0"),
    Case("train-bpe-dropout-unigram", lambda c, f: ["train", str(RECIPE), "-o", str(c / "run"), "--set", "tokenizer.dropout=0.1", "--set", "tokenizer.model=unigram"],
         r"tokenizer\.dropout needs tokenizer\.model: bpe \(the tokenizers library cannot sample unigram segmentations\)"),
    # --- txkit train: several corpora (data.train as a list; txkit/mixing.py)
    Case("train-corpora-duplicate-tag", lambda c, f: ["train", str(RECIPE), "-o", str(c / "run"), "--set", 'data.train=[{path: multi30k/train, tag: "<2de>"}, {path: multi30k/val, tag: "<2de>"}]'],
         r"--set: data\.train\[1\]\.tag <2de> is used by another corpus"),
    Case("train-corpora-tag-with-space", lambda c, f: ["train", str(RECIPE), "-o", str(c / "run"), "--set", 'data.train=[{path: multi30k/train, tag: "<2 de>"}]'],
         r"data\.train\[0\]\.tag must be one token without spaces"),
    Case("train-corpora-weight-zero", lambda c, f: ["train", str(RECIPE), "-o", str(c / "run"), "--set", "data.train=[{path: multi30k/train}, {path: multi30k/val, weight: 0}]"],
         r"data\.train\[1\]\.weight must be a positive number, not 0"),
    Case("train-corpora-weight-not-a-number", lambda c, f: ["train", str(recipe(c, "data:\n  train:\n    - path: multi30k/train\n      weight: lots\n")), "-o", str(c / "run")],
         r"recipe\.yaml: data\.train\[0\]\.weight must be a positive number, not 'lots'"),
    Case("train-corpora-weight-negative", lambda c, f: ["train", str(RECIPE), "-o", str(c / "run"), "--set", "data.train=[{path: multi30k/train, weight: -2}]"],
         r"data\.train\[0\]\.weight must be a positive number, not -2"),
    Case("train-corpora-entry-without-path", lambda c, f: ["train", str(RECIPE), "-o", str(c / "run"), "--set", "data.train=[{path: multi30k/train}, {weight: 2}]"],
         r"data\.train\[1\]\.path is required"),
    Case("train-corpora-unknown-entry-key", lambda c, f: ["train", str(RECIPE), "-o", str(c / "run"), "--set", "data.train=[{path: multi30k/train, wieght: 2}]"],
         r"data\.train\[0\]\.wieght: unknown key \(valid: path, weight, tag, src_lang, tgt_lang\)"),
    Case("train-corpora-missing-file", lambda c, f: ["train", str(RECIPE), "-o", str(c / "run"), "--set", "data.train=[{path: multi30k/train}, {path: multi30k/nope}]"],
         r"data\.train\[1\]\.path: data file not found: .*multi30k/nope\.en"),
    Case("train-corpora-tag-not-in-tokenizer", lambda c, f: ["train", str(RECIPE), "-o", str(c / "run"), "--set", f"tokenizer.path={model(c, f)}", "--set", 'data.train=[{path: multi30k/train, tag: "<2de>"}]'],
         r"/m: the tokenizer has no token <2de> \(a data\.train tag\)", owned=["run"]),
    Case("train-corpora-eval-tag-unknown", lambda c, f: ["train", str(RECIPE), "-o", str(c / "run"), "--set", 'data.train=[{path: multi30k/train, tag: "<2de>"}]', "--set", "data.eval_tag=<2fr>"],
         r"data\.eval_tag <2fr> is not the tag of any data\.train corpus \(their tags: <2de>\)"),
    Case("train-resume-skips-a-damaged-checkpoint", lambda c, f: ["train", str(RECIPE), "-o", str(_cut(run_copy(c, f), f"{CK}/checkpoint-00000004/training_state/optimizer.pt").parents[3]), "--resume", *_resume_sets(f)],
         r"skipping checkpoint-00000004, it is damaged: .*optimizer\.pt: truncated or corrupt.*\n(.*\n)*.*resumed from .*checkpoint-00000002", code=0, owned=["run"]),
    Case("train-resume-from-corrupt-state", lambda c, f: ["train", str(RECIPE), "-o", str(c / "run2"), "--resume-from", str(_cut(run_copy(c, f), f"{CK}/checkpoint-00000004/training_state/trainer_state.json").parents[1]), *_resume_sets(f)],
         r"trainer_state\.json: not valid JSON", owned=["run2"]),
    Case("train-resume-nothing-complete", lambda c, f: ["train", str(RECIPE), "-o", str(_all_weights_cut(run_copy(c, f))), "--resume", *_resume_sets(f)],
         r"run: no checkpoint is complete \(2 damaged\)", owned=["run"]),
    # --- txkit run
    Case("run-empty-recipe", lambda c, f: ["run", str(recipe(c, "")), "-o", str(c / "run")],
         r"recipe\.yaml: the recipe is empty"),
    Case("run-recipe-without-data", lambda c, f: ["run", str(recipe(c, "model:\n  preset: transformer-tiny\n")), "-o", str(c / "run")],
         r"recipe\.yaml: the recipe does not say what to train on"),
    # --- txkit run: directions and distillation (txkit/distill.py)
    Case("run-eval-test-untrained-direction", lambda c, f: ["run", str(RECIPE), "-o", str(c / "run"), "--set", 'data.train=[{path: multi30k/train, tag: "<2de>"}]', "--set", 'eval.test=[{path: multi30k/test2016, tag: "<2fr>"}]'],
         r"tiny\.yaml: eval\.test\[0\]: the model is not trained for the tag <2fr> \(data\.train's directions: en->de <2de>\)"),
    Case("run-eval-test-untrained-language", lambda c, f: ["run", str(RECIPE), "-o", str(c / "run"), "--set", "eval.test=[{path: multi30k/test2016, tgt_lang: fr}]"],
         r"eval\.test\[0\]: the model is not trained for en->fr \(data\.train's directions: en->de\)"),
    Case("run-eval-test-unknown-key", lambda c, f: ["run", str(RECIPE), "-o", str(c / "run"), "--set", "eval.test=[{path: multi30k/test2016, tgt: fr}]"],
         r"eval\.test\[0\]\.tgt: unknown key \(valid: path, tag, src_lang, tgt_lang\)"),
    Case("run-distill-teacher-missing", lambda c, f: ["run", str(RECIPE), "-o", str(c / "run"), "--set", f"distill.teacher={c / 'nope'}"],
         r"distill\.teacher .*nope: no such model folder or run directory", owned=["run"]),
    Case("run-distill-teacher-not-a-model", lambda c, f: ["run", str(RECIPE), "-o", str(c / "run"), "--set", f"distill.teacher={user_folder(c / 't')}"],
         r"distill\.teacher .*/t: .*/t: not a model folder \(no config\.json\) nor a run directory", owned=["run"]),
    Case("run-distill-teacher-other-architecture", lambda c, f: ["run", str(RECIPE), "-o", str(c / "run"), "--set", f"distill.teacher={_json(model(c, f), 'config.json', {'model_type': 'bert'})}"],
         r"distill\.teacher .*/m: not a txkit translation model \(a bert model\)", owned=["run"]),
    Case("run-distill-teacher-other-languages", lambda c, f: ["run", str(RECIPE), "-o", str(c / "run"), "--set", f"distill.teacher={run_copy(c, f)}", "--set", "data.tgt_lang=fr"],
         r"distill\.teacher .*/run: it was trained for en->de, not data\.train\[0\]'s en->fr \(its recipe\.yaml\)", owned=["run"]),
    Case("run-distill-teacher-cannot-encode", lambda c, f: ["run", str(corpus_recipe(c, str(_cyrillic_corpus(c, f)))), "-o", str(c / "run"), "--set", f"distill.teacher={model(c, f)}"],
         r"distill\.teacher .*/m: its vocabulary cannot encode data\.train\[0\]'s source text: \d+% of the tokens", owned=["run"]),
    Case("run-distill-original-weight-negative", lambda c, f: ["run", str(RECIPE), "-o", str(c / "run"), "--set", "distill.original_weight=-1"],
         r"distill\.original_weight must be a number of at least 0, not -1\.0"),
    Case("train-distill-recipe", lambda c, f: ["train", str(RECIPE), "-o", str(c / "run"), "--set", f"distill.teacher={model(c, f)}"],
         r"tiny\.yaml: distill\.teacher is set: `txkit run` has the teacher translate data\.train before training"),
    # --- txkit report
    Case("report-step-not-a-number", lambda c, f: ["report", str(_log_line(run_copy(c, f), '{"step": "ten", "train/loss": 1.0}'))],
         r"log\.jsonl line 3: \"step\" must be an integer, not \"ten\""),
    Case("report-bad-json-line", lambda c, f: ["report", str(_log_line(run_copy(c, f), "{oops"))],
         r"log\.jsonl line 3: not valid JSON"),
    Case("report-no-log", lambda c, f: ["report", str(user_folder(c / "run"))],
         r"log\.jsonl: no training log"),
    Case("report-out-is-a-file", lambda c, f: ["report", str(run_copy(c, f)), "--out", str(text(c, f, "f.txt"))],
         r"--out .*f\.txt: exists and is not a folder"),
    # --- txkit serve (refused before anything listens)
    Case("serve-no-such-model", lambda c, f: ["serve", str(c / "nope"), "--port", "0"],
         r"nope: no such model folder, run directory or Hub id"),
    Case("serve-truncated-weights", lambda c, f: ["serve", str(_cut(model(c, f), "model.safetensors")), "--port", "0"],
         r"m/model\.safetensors: truncated"),
    Case("serve-port-not-a-number", lambda c, f: ["serve", str(model(c, f)), "--port", "http"],
         r"--port http: expected a TCP port number from 0 to 65535"),
    Case("serve-port-out-of-range", lambda c, f: ["serve", str(model(c, f)), "--port", "70000"],
         r"--port 70000: expected a TCP port number"),
    Case("serve-port-taken", lambda c, f: ["serve", str(model(c, f)), "--port", str(_taken_port())],
         r"--host 127\.0\.0\.1 --port \d+: cannot listen there \(Address already in use\)"),
    Case("serve-no-texts-allowed", lambda c, f: ["serve", str(model(c, f)), "--port", "0", "--max-texts", "0"],
         r"--max-texts 0: must be at least 1"),
    Case("serve-empty-api-key", lambda c, f: ["serve", str(model(c, f)), "--port", "0", "--api-key", " "],
         r"--api-key \(or \$TXKIT_API_KEY\) is empty"),
    Case("serve-device-gpu", lambda c, f: ["serve", str(model(c, f)), "--port", "0", "--device", "gpu"],
         r"--device gpu: unknown device"),
    # --- txkit push (nothing is sent: the checks come first)
    Case("push-truncated-weights", lambda c, f: ["push", str(_cut(model(c, f), "model.safetensors")), "--repo", "me/tiny"],
         r"m/model\.safetensors: truncated"),
    Case("push-bad-repo-id", lambda c, f: ["push", str(model(c, f)), "--repo", "no slash"],
         r"--repo 'no slash': expected USER/NAME"),
]


_HELD_SOCKETS: list = []  # listening sockets the port-taken case keeps open until the module ends


def _taken_port() -> int:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    _HELD_SOCKETS.append(sock)
    return sock.getsockname()[1]


def _gzip(case: Path) -> Path:
    import gzip

    path = case / "train.gz"
    path.write_bytes(gzip.compress(b"a line\n"))
    return path


def _cut(folder: Path, name: str, keep: float = 0.5) -> Path:
    truncate(folder / name, keep)
    return folder / name if "/" in name else folder


def _json(folder: Path, name: str, changes: dict) -> Path:
    if changes.keys() == {"a"}:
        (folder / name).write_text(json.dumps(changes), encoding="utf-8")
    else:
        edit_json(folder / name, **changes)
    return folder


def _swapped(folder: Path) -> Path:
    swap_two_tokens(folder / "tokenizer.json")
    return folder


def _other_size_tokenizer(case: Path, fx: Fixtures) -> Path:
    from tokenizers import Tokenizer, models

    folder = model(case, fx)
    Tokenizer(models.WordLevel({f"w{i}": i for i in range(400)}, unk_token="w3")).save(str(folder / "tokenizer.json"))
    return folder


def _users_m_old_tmp(case: Path) -> list:
    user_folder(case / "M.old")
    user_folder(case / "M.tmp")
    return []


def _latin1_corpus(case: Path) -> Path:
    (case / "corpus.en").write_text("A first line\nA second line\n", encoding="utf-8")
    (case / "corpus.de").write_bytes("Eine Zeile\nCaf\xe9\n".encode("latin-1"))
    return corpus_recipe(case, str(case / "corpus"))


def _resume_sets(fx: Fixtures) -> list:
    return ["--set", f"tokenizer.path={fx.run / 'tokenizer'}", "--set", "train.max_steps=4", "--set",
            "train.save_every_steps=2", "--set", "train.eval_every_steps=0", "--set", "data.valid=",
            "--set", "train.log_every_steps=1"]  # fmt: skip


def _cyrillic_corpus(case: Path, fx: Fixtures) -> Path:
    """corpus.tsv: the 300 training pairs with their English side spelled in Cyrillic letters (a script the
    small test model's vocabulary, learned from English and German, has no tokens for)."""
    latin, cyrillic = "abcdefghijklmnopqrstuvwxyz", "абцдефгхийклмнопярстужвьыз"
    spell = str.maketrans(latin + latin.upper(), cyrillic + cyrillic.upper())
    en = (fx.text / "train.en").read_text(encoding="utf-8").splitlines()
    de = (fx.text / "train.de").read_text(encoding="utf-8").splitlines()
    path = case / "corpus.tsv"
    path.write_text("".join(f"{a.translate(spell)}\t{b}\n" for a, b in zip(en, de)), encoding="utf-8")
    return path


def _all_weights_cut(run: Path) -> Path:
    for ckpt in (run / CK).iterdir():
        truncate(ckpt / "model.safetensors")
    return run


def _log_line(run: Path, line: str) -> Path:
    log = run / "log.jsonl"
    lines = log.read_text(encoding="utf-8").splitlines()
    lines.insert(2, line)
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return run


# ----------------------------------------------------------------------------- the harness


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under `root`: relative path -> sha256 (or "dir")."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            found[os.path.relpath(os.path.join(dirpath, name), root)] = "dir"
        for name in filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            found[rel] = "link" if os.path.islink(path) else hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return found


def run_cli(args: list[str], capsys) -> tuple[object, str]:
    """`txkit ARGS` through the console entry point in this process; (exit status, stdout + stderr)."""
    from txkit.cli import main

    code: object = 0
    try:
        main(args)
    except SystemExit as exc:
        code = exc.code or 0
    except BaseException:  # a bug: keep the traceback in the output so the assertion shows it
        code = "exception"
        print(traceback.format_exc(), file=sys.stderr)
    out = capsys.readouterr()
    return code, out.out + out.err


def check_untouched(before: dict, after: dict, owned: list[str]) -> None:
    for rel, digest in before.items():
        if any(rel == o or rel.startswith(o + os.sep) for o in owned):
            continue
        assert rel in after, f"{rel} was deleted"
        assert after[rel] == digest, f"{rel} was changed"
    leftovers = [rel for rel in after if ".txkit-" in rel]
    assert not leftovers, f"temporary files left behind: {leftovers}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, fx: Fixtures, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "case"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setenv("TXKIT_DATA", str(fx.data))
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    args = [str(a) for a in case.build(folder, fx)]
    capsys.readouterr()
    before = snapshot(folder)
    code, output = run_cli(args, capsys)
    after = snapshot(folder)
    assert "Traceback" not in output, output
    assert code == case.code, output
    assert re.search(case.message, output), output
    if case.absent:
        assert not re.search(case.absent, output), output
    if case.code:
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, output  # one line says what is wrong
    check_untouched(before, after, case.owned)


def test_the_table_covers_every_command():
    from txkit.cli import _COMMAND_MODULES

    commands = {c.id.split("-")[0] for c in CASES}  # "build", "stats", "encode" are the tokenizer's
    cli_names = {"eval" if m == "evaluate" else m for m in _COMMAND_MODULES} - {"tokenizer"}
    assert len(CASES) >= 50
    assert cli_names | {"build", "stats", "encode"} <= commands


# ----------------------------------------------------------------------------- real signals


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_translation_leaves_nothing_behind(signum, fx: Fixtures, tmp_path):
    """`txkit translate -o OUT` killed while it writes: no OUT, no hidden temporary, the inputs untouched."""
    folder = tmp_path / "case"
    folder.mkdir()
    source = folder / "long.en"
    lines = (fx.text / "train.en").read_text(encoding="utf-8").splitlines()
    source.write_text("\n".join(lines * 20) + "\n", encoding="utf-8")
    model_dir = copy(fx.model, folder / "m")
    before = snapshot(folder)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "txkit", "translate", str(model_dir), "-i", str(source),
                             "-o", str(folder / "out.txt"), "--device", "cpu"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a shell's background job inherits SIGINT ignored (and Python then keeps it
                            # ignored); give the child the default disposition, as a terminal user has
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.monotonic() + 60
    while not list(folder.glob(".out.txt.txkit-*")):  # translating: the temporary output exists
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    if signum == signal.SIGINT:
        assert proc.returncode == 130  # KeyboardInterrupt, ended by the CLI
    else:
        assert proc.returncode == -signal.SIGTERM
    after = snapshot(folder)
    assert not (folder / "out.txt").exists()
    check_untouched(before, after, [])
    assert set(after) == set(before)
