"""txkit.fetch against real servers on this machine: an HTTP server (http.server in a thread) serving gzipped
copies of ../shared/data/multi30k made in tmp_path, and a local dataset folder in the Hub's layout for
WMT14; the fetched files must equal the shared ones byte for byte, and bad downloads must leave nothing."""

from __future__ import annotations

import functools
import gzip
import http.server
import threading
from pathlib import Path

import pytest

from conftest import run_cli
from txkit import fetch
from txkit.errors import TxkitError
from txkit.recipe import load_recipe

PAIR_FILES = [f"{split}.{lang}" for split in ("train", "val", "test2016") for lang in ("en", "de")]


@pytest.fixture
def multi30k_server(shared_data, tmp_path, monkeypatch):
    """Serves `<upstream name>.gz` for en and de like multi30k/dataset's data/task1/raw; yields its folder."""
    served = tmp_path / "served"
    served.mkdir()
    for name in PAIR_FILES:
        split, lang = name.split(".")
        raw = (shared_data / "multi30k" / name).read_bytes()
        (served / f"{fetch.MULTI30K_SPLITS[split]}.{lang}.gz").write_bytes(gzip.compress(raw, compresslevel=1))
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv(fetch.MULTI30K_URL_ENV, f"http://127.0.0.1:{server.server_address[1]}/raw/")
    # the handler serves /raw/NAME from `served`
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def translate_path(self, path):
        return super().translate_path(path.replace("/raw/", "/", 1))

    def log_message(self, *args):  # keep pytest's output clean
        pass


def _write_recipe(tmp_path: Path, test=("multi30k/test2016",)) -> Path:
    recipe = tmp_path / "recipe.yaml"
    tests = ", ".join(test)
    recipe.write_text(
        "data:\n  train: multi30k/train\n  valid: multi30k/val\n  src_lang: en\n  tgt_lang: de\n"
        f"eval:\n  test: [{tests}]\n",
        encoding="utf-8",
    )
    return recipe


def test_missing_multi30k_files_are_fetched_and_verified(multi30k_server, shared_data, tmp_path, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setenv("TXKIT_DATA", str(data))
    recipe = load_recipe(_write_recipe(tmp_path))
    assert sorted(f.name for _, f in fetch.missing_files(recipe)) == sorted(PAIR_FILES)
    messages = []
    fetched = fetch.fetch_recipe_data(recipe, log=messages.append)
    assert sorted(f.name for f in fetched) == sorted(PAIR_FILES)
    for name in PAIR_FILES:
        assert (data / "multi30k" / name).read_bytes() == (shared_data / "multi30k" / name).read_bytes()
    # it says what it downloads, from where, to where (test2016 is test_2016_flickr upstream)
    test_de = next(m for m in messages if "test2016.de" in m)
    assert "test_2016_flickr.de.gz" in test_de and str(data / "multi30k" / "test2016.de") in test_de
    assert not list((data / "multi30k").glob(".*"))  # no temporary files left
    assert fetch.missing_files(recipe) == [] and fetch.fetch_recipe_data(recipe, log=messages.append) == []


def test_corrupted_download_is_rejected_and_not_left(multi30k_server, shared_data, tmp_path, monkeypatch):
    lines = (shared_data / "multi30k" / "val.de").read_text(encoding="utf-8").splitlines(keepends=True)
    lines[500] = "Ein Hund rennt.\n"  # one changed sentence: still a valid gzip file, wrong content
    (multi30k_server / "val.de.gz").write_bytes(gzip.compress("".join(lines).encode("utf-8")))
    dest = tmp_path / "data" / "multi30k" / "val.de"
    source = fetch.source_for(dest)
    with pytest.raises(TxkitError, match="checksum mismatch") as failure:
        fetch.fetch_multi30k_file(source, dest)
    assert fetch.MULTI30K_SHA256["val.de"] in str(failure.value) and "val.de.gz" in str(failure.value)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # the temporary download was removed too

    (multi30k_server / "val.de.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(TxkitError, match="not a complete gzip file"):
        fetch.fetch_multi30k_file(source, dest)
    assert list(dest.parent.iterdir()) == []


def test_cli_reports_a_failed_fetch_in_one_line(multi30k_server, tmp_path, monkeypatch, capsys):
    (multi30k_server / "val.en.gz").unlink()  # the server answers 404
    monkeypatch.setenv("TXKIT_DATA", str(tmp_path / "data"))
    recipe = _write_recipe(tmp_path)
    code, _, err = run_cli(["run", recipe, "--output-dir", tmp_path / "run"], capsys)
    assert code == 2
    assert "error: cannot download" in err and "val.en.gz: HTTP 404" in err and "Traceback" not in err


def test_unknown_missing_corpus_names_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("TXKIT_DATA", str(tmp_path))
    recipe = load_recipe(_write_recipe(tmp_path, test=("mycorpus/test",)))
    (tmp_path / "multi30k").mkdir()
    for name in PAIR_FILES:
        (tmp_path / "multi30k" / name).write_text("x\n")
    with pytest.raises(TxkitError, match=r"eval\.test: data file not found: .*mycorpus/test\.en .*no public source"):
        fetch.fetch_recipe_data(recipe)


def test_sources_of_known_files():
    assert fetch.source_for("x/multi30k/test2016.cs").url.endswith("/test_2016_flickr.cs.gz")
    assert fetch.source_for("multi30k/train.fr").sha256 == fetch.MULTI30K_SHA256["train.fr"]
    source = fetch.source_for("data/newstest2014/newstest2014.en-fr.fr")
    assert (source.kind, source.config, source.pair_lang) == ("wmt14", "fr-en", "fr")
    assert fetch.source_for("newstest2014/newstest2014.de").config == "de-en"
    for unknown in ("multi30k/test2017.de", "multi30k/train.ja", "other/train.de", "newstest2014/newstest2014.fr"):
        assert fetch.source_for(unknown) is None, unknown


def test_newstest2014_is_fetched_from_a_hub_layout_dataset(shared_data, tmp_path, monkeypatch):
    """wmt/wmt14's layout (configs in the README, a `translation` column), loaded by `datasets` from disk."""
    from datasets import Dataset

    en = (shared_data / "newstest2014" / "newstest2014.en").read_text(encoding="utf-8").splitlines()
    de = (shared_data / "newstest2014" / "newstest2014.de").read_text(encoding="utf-8").splitlines()
    hub = tmp_path / "wmt14"
    (hub / "de-en").mkdir(parents=True)
    (hub / "README.md").write_text(
        "---\nconfigs:\n- config_name: de-en\n  data_files:\n  - split: test\n    path: de-en/test-*.parquet\n---\n"
    )
    pairs = [{"de": d, "en": e} for d, e in zip(de, en)]
    pairs[0] = {"de": pairs[0]["de"].replace(" ", "  "), "en": pairs[0]["en"] + " \n"}  # stray whitespace
    Dataset.from_dict({"translation": pairs}).to_parquet(str(hub / "de-en" / "test-00000-of-00001.parquet"))
    monkeypatch.setenv(fetch.WMT14_DATASET_ENV, str(hub))
    monkeypatch.setenv("TXKIT_DATA", str(tmp_path / "data"))
    recipe = _write_recipe(tmp_path, test=("newstest2014/newstest2014",))
    recipe_obj = load_recipe(recipe)
    missing = [f for key, f in fetch.missing_files(recipe_obj) if key == "eval.test"]
    for _, f in fetch.missing_files(recipe_obj):  # multi30k is not the point here: put placeholders
        if f not in missing:
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text("x\n")
    messages = []
    fetched = fetch.fetch_recipe_data(recipe_obj, log=messages.append)
    assert sorted(fetched) == sorted(missing)
    assert len(messages) == 1 and str(hub) in messages[0]  # both sides come from one download
    for lang in ("en", "de"):
        got = tmp_path / "data" / "newstest2014" / f"newstest2014.{lang}"
        assert got.read_bytes() == (shared_data / "newstest2014" / f"newstest2014.{lang}").read_bytes()
