"""Download the corpora a recipe names when their files are missing, from each corpus's public source.

    fetch_recipe_data(recipe)        every missing local file of data.train, data.valid and eval.test
    source_for(path)                 where a file comes from (None when txkit knows no public source)

Known corpora (matched on the last folder and the file name, wherever $TXKIT_DATA points):

    multi30k/{train,val,test2016}.{en,de,fr,cs}
        The raw files of the public GitHub repository multi30k/dataset, `data/task1/raw/NAME.LANG.gz`
        (test2016 is `test_2016_flickr` there), decompressed and checked against the sha256 sums below.
        The base URL can be replaced with $TXKIT_MULTI30K_URL (a mirror, or a local server in the tests).
    newstest2014/newstest2014.{en,de}, newstest2014/newstest2014.en-fr.{en,fr}, .en-cs.{en,cs}
        The `test` split of the Hub dataset wmt/wmt14 (configs de-en, fr-en, cs-en), through `datasets`;
        $TXKIT_WMT14_DATASET replaces the dataset id (a local copy with the same layout, say).

Every file is written under a temporary name, checked, and renamed into place, so an interrupted or
corrupted download never leaves a file that looks complete. `hub:` corpora need no fetching here:
`datasets` downloads and caches them when training loads them.

Light module: the standard library only at import time.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from txkit import atomic
from txkit.errors import TxkitError

MULTI30K_URL_ENV = "TXKIT_MULTI30K_URL"
MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
WMT14_DATASET_ENV = "TXKIT_WMT14_DATASET"
WMT14_DATASET = "wmt/wmt14"
NEWSTEST2014_LINES = 3003

# txkit's split names -> the file names upstream.
MULTI30K_SPLITS = {"train": "train", "val": "val", "test2016": "test_2016_flickr"}
MULTI30K_LANGS = ("en", "de", "fr", "cs")

# sha256 of the DECOMPRESSED files (not of the .gz files): the sums were computed from copies of the
# upstream files that exist here only decompressed. A .gz is therefore checked after decompression,
# which catches a corrupted download just as well (gzip's own CRC catches most damage even earlier).
MULTI30K_SHA256 = {
    "train.en": "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6",
    "train.de": "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72",
    "train.fr": "5925a3c18f1587b6b54b87743106e6e8ab93618edb6f65d19eac0621f853a10d",
    "train.cs": "2be68b38c8d586ff4f54eb13cc6e1baaaa053695b3f070d3038303a47f2268da",
    "val.en": "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227",
    "val.de": "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660",
    "val.fr": "5304e444d842e962b2dda4d816b70b22a1765b15401642b7ca37a67477e708dc",
    "val.cs": "d53827e469b0a1ca8d57e9e26b2b64c4bc4b33f5479c7b03ae87ae5c882c3e33",
    "test2016.en": "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182",
    "test2016.de": "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16",
    "test2016.fr": "cb3160d69b002bb638e66cc7612fcd56cb0af82eadc9c142dedc438afb885ef6",
    "test2016.cs": "45adb85f688de8407fddcbe1b36dca15d12aab868149b337e2576f2d6d2ff8d8",
}

# newstest2014 file names -> (wmt14 config, the pair's non-English language).
NEWSTEST2014_FILES = {
    "newstest2014": ("de-en", "de"),
    "newstest2014.en-fr": ("fr-en", "fr"),
    "newstest2014.en-cs": ("cs-en", "cs"),
}

_DOWNLOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class Source:
    """Where one missing file comes from: `kind` is "multi30k" (a gzipped raw file) or "wmt14" (a Hub split)."""

    kind: str
    description: str  # for the user: what is downloaded from where
    url: str = ""  # multi30k
    sha256: str = ""  # multi30k: of the decompressed file
    dataset: str = ""  # wmt14: dataset id or local folder
    config: str = ""  # wmt14: e.g. de-en
    pair_lang: str = ""  # wmt14: de, fr or cs; with "en" the two sides of the pair


def multi30k_url() -> str:
    return (os.environ.get(MULTI30K_URL_ENV) or MULTI30K_URL).rstrip("/")


def source_for(path: str | os.PathLike) -> Source | None:
    """The public source of a corpus file, recognised by its folder and name; None when txkit knows none."""
    path = Path(path)
    folder, stem, lang = path.parent.name, path.stem, path.suffix.lstrip(".")
    if folder == "multi30k" and stem in MULTI30K_SPLITS and lang in MULTI30K_LANGS:
        url = f"{multi30k_url()}/{MULTI30K_SPLITS[stem]}.{lang}.gz"
        return Source("multi30k", f"Multi30k {stem}.{lang} from {url}", url=url, sha256=MULTI30K_SHA256[path.name])
    if folder == "newstest2014" and stem in NEWSTEST2014_FILES:
        config, other = NEWSTEST2014_FILES[stem]
        if lang in ("en", other):
            dataset = os.environ.get(WMT14_DATASET_ENV) or WMT14_DATASET
            what = f"newstest2014 ({config}) from the test split of the Hub dataset {dataset}"
            return Source("wmt14", what, dataset=dataset, config=config, pair_lang=other)
    return None


def recipe_files(recipe) -> list[tuple[str, Path]]:
    """(recipe key, file) for every local corpus file the recipe reads: data.train, data.valid, eval.test."""
    from txkit.corpus_spec import eval_sets, train_corpora
    from txkit.recipe import corpus_files

    d = recipe.data
    specs = [("data.train", c.path, *c.langs(d)) for c in train_corpora(recipe)]
    specs += [("data.valid", d.valid, d.src_lang, d.tgt_lang)]
    specs += [("eval.test", t.path, t.src_lang, t.tgt_lang) for t in eval_sets(recipe)]  # each direction's files
    return [(key, f) for key, spec, src, tgt in specs if spec for f in corpus_files(spec, src, tgt)]


def missing_files(recipe) -> list[tuple[str, Path]]:
    """The recipe's local corpus files that do not exist."""
    return [(key, f) for key, f in recipe_files(recipe) if not f.is_file()]


def fetch_recipe_data(recipe, log: Callable[[str], None] | None = None) -> list[Path]:
    """Download every missing local corpus file of `recipe` from its public source; the fetched files.

    Raises:
        TxkitError: a missing file with no known source (naming the recipe key and the path), a failed
            download, or a file whose checksum or line count is wrong (nothing is left in its place).
    """
    log = log or _stderr
    missing = missing_files(recipe)
    unknown = [(key, f) for key, f in missing if source_for(f) is None]
    if unknown:
        key, f = unknown[0]
        root = os.environ.get("TXKIT_DATA") or "./data (TXKIT_DATA unset)"
        raise TxkitError(
            f"{key}: data file not found: {f} (relative paths resolve against TXKIT_DATA={root}), and txkit knows "
            "no public source to fetch it from"
        )
    fetched: list[Path] = []
    for _, f in missing:
        if f.is_file():  # fetched along with its pair (wmt14 writes both sides at once)
            continue
        source = source_for(f)
        log(f"fetching {source.description} -> {f}")
        if source.kind == "multi30k":
            fetch_multi30k_file(source, f)
            fetched.append(f)
        else:
            fetched += fetch_wmt14_test(source, f.parent / f.stem)
    return fetched


# ----------------------------------------------------------------------------- Multi30k


def fetch_multi30k_file(source: Source, dest: str | os.PathLike) -> Path:
    """Download `source.url` (a .gz), decompress it into `dest`, check its sha256; atomic."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with atomic.writing_path(dest) as tmp:
        try:
            with urllib.request.urlopen(source.url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
                with gzip.GzipFile(fileobj=response) as unzipped, open(tmp, "wb") as out:
                    while chunk := unzipped.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
        except urllib.error.HTTPError as exc:
            raise TxkitError(f"cannot download {source.url}: HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise TxkitError(f"cannot download {source.url}: {exc.reason}") from None
        except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError; a cut stream is an EOFError
            raise TxkitError(f"cannot download {source.url}: not a complete gzip file ({exc})") from None
        if digest.hexdigest() != source.sha256:
            raise TxkitError(
                f"{source.url}: checksum mismatch: the decompressed file has sha256 {digest.hexdigest()}, expected "
                f"{source.sha256}; the download was discarded ({dest} not written)"
            )
    return dest


# ----------------------------------------------------------------------------- WMT14 (Hub)


def fetch_wmt14_test(source: Source, prefix: str | os.PathLike) -> list[Path]:
    """Write the test split of `source.dataset` (config `source.config`) as PREFIX.en and PREFIX.<pair_lang>."""
    from datasets import load_dataset

    prefix = Path(prefix)
    try:
        ds = load_dataset(source.dataset, source.config, split="test")
    except Exception as exc:  # offline, unknown id or config: all reported the same way
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TxkitError(f"cannot load {source.dataset} (config {source.config}, split test): {text}") from None
    if "translation" not in ds.column_names:
        raise TxkitError(f"{source.dataset}: no 'translation' column (found {', '.join(ds.column_names)})")
    pairs = ds["translation"]
    if len(pairs) != NEWSTEST2014_LINES:
        raise TxkitError(
            f"{source.dataset} ({source.config}) test split has {len(pairs)} pairs, not the {NEWSTEST2014_LINES} "
            "of newstest2014; nothing written"
        )
    prefix.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for lang in ("en", source.pair_lang):
        dest = Path(f"{prefix}.{lang}")
        # one sentence per line: a line break inside a sentence would misalign the pair
        atomic.write_text(dest, "".join(" ".join(pair[lang].split()) + "\n" for pair in pairs))
        written.append(dest)
    return written


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

