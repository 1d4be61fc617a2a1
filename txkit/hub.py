"""Sharing a model: its model card (README.md) and `push` to the Hugging Face Hub.

A txkit model folder is already what the Hub needs: `config.json` with `auto_map` and the modeling code,
`model.safetensors`, `generation_config.json`, the tokenizer files. This module adds the model card and
uploads the folder with `huggingface_hub` in one commit.

`training_info.json` (written next to the weights by the training loop) describes how a model was
trained; its keys (all optional) are those of `TRAINING_INFO_KEYS`:

    steps         parameter updates
    src_tokens    source tokens seen in training (padding excluded)
    tgt_tokens    target tokens seen in training (padding excluded)
    wall_time_s   training wall-clock time in seconds
    hardware      e.g. "8x NVIDIA H100 80GB" or "CPU (2 cores)"
    date          ISO date the training finished, e.g. "2026-11-20"

Light at import time: huggingface_hub and yaml are imported inside the functions.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Sequence

from txkit import atomic
from txkit.modelfiles import check_model_folder
from txkit import runs
from txkit.corpus_spec import parse_corpus_spec
from txkit.errors import TxkitError
from txkit.runs import RECIPE_FILE, is_run_dir, resolve_model

MODEL_CARD = runs.MODEL_CARD  # the run directory's names are runs.py's
TRAINING_INFO_FILE = runs.TRAINING_INFO
TRAINING_INFO_KEYS = ("steps", "src_tokens", "tgt_tokens", "wall_time_s", "hardware", "date")
TAGS = ["translation", "txkit"]
# Never uploaded: optimizer/RNG states of a checkpoint (resuming only, several times the weights' size),
# git and huggingface_hub's local metadata, and folders still being written.
PUSH_IGNORE = ["training_state/*", ".git/*", ".cache/*", "*.tmp/*"]
_PAPER = "https://arxiv.org/abs/1706.03762"


# --------------------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------------------


def read_json(path: str | os.PathLike, what: str) -> dict:
    """A JSON file as a dict, or a TxkitError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise TxkitError(f"{path}: {what} not found") from None
    except json.JSONDecodeError as exc:
        raise TxkitError(f"{path}: {what} is not valid JSON (line {exc.lineno}: {exc.msg})") from None


def _dataset_of(report: dict) -> tuple[str, str]:
    """(dataset id, readable name) of an eval report: its `dataset` entry if given, else the folder and
    file name of its first reference, e.g. ("multi30k", "multi30k test2016")."""
    named = report.get("dataset")
    if isinstance(named, dict):
        return str(named.get("type") or named.get("name")), str(named.get("name") or named.get("type"))
    if isinstance(named, str):
        return named, named
    refs = report.get("references") or [{}]
    path = Path(str(refs[0].get("path") or "test"))
    folder = path.parent.name
    return (folder or path.stem), " ".join(p for p in (folder, path.stem) if p)


def eval_results(reports: Sequence[dict], languages: Sequence[str] | None = None) -> list:
    """`huggingface_hub.EvalResult`s (the card's model-index) from `txkit eval --json` reports: one per
    metric and report, with the sacreBLEU signature as the metric's `signature` argument."""
    from huggingface_hub import EvalResult

    pair = "-".join(languages) if languages and len(languages) == 2 else None
    results = []
    for report in reports:
        if not isinstance(report.get("scores"), dict):
            raise TxkitError("eval report has no 'scores' (expected the JSON written by `txkit eval --json`)")
        dataset_type, dataset_name = _dataset_of(report)
        own = report.get("languages")  # one direction of a multilingual model (txkit run)
        this_pair = "-".join(own) if isinstance(own, list) and len(own) == 2 else pair
        for metric, result in report["scores"].items():
            results.append(
                EvalResult(
                    task_type="translation",
                    task_name=f"Translation {this_pair}" if this_pair else "Translation",
                    dataset_type=dataset_type,
                    dataset_name=dataset_name,
                    dataset_config=this_pair,
                    metric_type=metric,
                    metric_name=result.get("name", metric),
                    metric_value=round(float(result["score"]), 2),
                    metric_args={"signature": result["signature"]} if result.get("signature") else None,
                )
            )
    return results


def _recipe_dict(recipe) -> dict | None:
    """A recipe given as a dict, a Recipe object or a YAML file -> plain dict."""
    if recipe is None or isinstance(recipe, dict):
        return recipe
    if hasattr(recipe, "to_dict"):
        return recipe.to_dict()
    import yaml

    try:
        return yaml.safe_load(Path(recipe).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TxkitError(f"{recipe}: recipe not found") from None


def _near(model_dir: Path, name: str) -> Path | None:
    """`name` in the model folder, else in the run directory it belongs to (RUN/model, RUN/best,
    RUN/checkpoints/checkpoint-N), else None."""
    for folder in (model_dir, model_dir.parent, model_dir.parent.parent):
        if (folder is model_dir or is_run_dir(folder)) and (folder / name).is_file():
            return folder / name
    return None


def _languages_from(recipe: dict | None) -> list[str] | None:
    data = (recipe or {}).get("data") or {}
    langs = [data.get("src_lang"), data.get("tgt_lang")]
    train = data.get("train")
    if isinstance(train, list):  # a multilingual model: every language it translates from and into
        for entry in train:
            if isinstance(entry, dict):
                langs += [entry.get("src_lang"), entry.get("tgt_lang")]
    return list(dict.fromkeys(lang for lang in langs if lang)) or None


def _datasets_from(recipe: dict | None) -> list[str] | None:
    """Hub dataset ids of the training corpora (`hub:OWNER/NAME`), else their folder names (e.g. multi30k)."""
    train = ((recipe or {}).get("data") or {}).get("train") or ""
    specs = [train] if isinstance(train, str) else [str(e.get("path", "")) for e in train if isinstance(e, dict)]
    collections = [parse_corpus_spec(s).collection for s in specs if s]
    return list(dict.fromkeys(collections)) or None  # several corpora: each collection once, in recipe order


def _architecture_rows(config: dict) -> list[tuple[str, str]]:
    shared = config.get("tgt_vocab_size") is None
    vocab = str(config.get("vocab_size")) + (" (shared source-target)" if shared else f" / {config['tgt_vocab_size']}")
    return [
        ("layers (encoder + decoder)", f"{config.get('encoder_layers')} + {config.get('decoder_layers')}"),
        (
            "d_model / d_ff / heads",
            f"{config.get('d_model')} / {config.get('ffn_dim')} / {config.get('attention_heads')}",
        ),
        ("residual blocks", "pre-norm" if config.get("normalize_before") else "post-norm (the paper's)"),
        ("activation", str(config.get("activation_function"))),
        ("vocabulary", vocab),
        ("positions", f"sinusoidal, up to {config.get('max_position_embeddings')} tokens"),
    ]


def _count_parameters(model_dir: Path) -> int | None:
    """Parameters of the model from the safetensors header (tied matrices counted once)."""
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        return None
    with open(weights, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    total = 0
    for name, info in header.items():
        if name != "__metadata__" and not name.startswith("lm_head.") and "embed_tokens" not in name:
            n = 1
            for dim in info["shape"]:
                n *= dim
            total += n
    return total


def _human(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))


def _training_section(info: dict | None, recipe: dict | None) -> list[str]:
    import yaml

    lines = ["## Training", ""]
    if info:
        facts = []
        if info.get("steps") is not None:
            facts.append(f"- steps: {info['steps']:,}")
        if info.get("src_tokens") is not None or info.get("tgt_tokens") is not None:
            src, tgt = _human(info.get("src_tokens") or 0), _human(info.get("tgt_tokens") or 0)
            facts.append(f"- tokens seen: {src} source, {tgt} target")
        if info.get("hardware"):
            facts.append(f"- hardware: {info['hardware']}")
        if info.get("wall_time_s") is not None:
            facts.append(f"- wall time: {info['wall_time_s'] / 3600:.2f} h ({info['wall_time_s']:.0f} s)")
        if info.get("date"):
            facts.append(f"- finished: {info['date']}")
        lines += facts + [""]
    teacher = ((recipe or {}).get("distill") or {}).get("teacher")
    if teacher:  # sequence-level distillation (txkit/distill.py): `txkit run` makes the training targets first
        beam = recipe["distill"].get("beam_size")
        lines += [f"Sequence-level distillation: trained on the translations of data.train's sources by the teacher "
                  f"`{teacher}` (beam {beam}), not on the original targets alone.", ""]  # fmt: skip
    if recipe:
        command = "txkit run" if teacher else "txkit train"
        lines += [
            f"The resolved recipe (every key, after overrides); `{command} recipe.yaml` reproduces the run:",
            "",
            "```yaml",
            yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True).rstrip(),
            "```",
            "",
        ]
    if not info and not recipe:
        lines += ["No training record was given for this card.", ""]
    return lines


def _scores_section(reports: Sequence[dict]) -> list[str]:
    if not reports:
        return []
    lines = [
        "## Scores",
        "",
        "| test set | metric | score | 95% CI | sacreBLEU signature |",
        "| --- | --- | ---: | --- | --- |",
    ]
    for report in reports:
        _, dataset_name = _dataset_of(report)
        for metric, result in report["scores"].items():
            ci = result.get("ci")
            ci_text = f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
            signature = str(result.get("signature", "")).replace("|", "\\|")  # a bare | would split the cell
            lines.append(
                f"| {dataset_name} | {result.get('name', metric)} | {float(result['score']):.2f} | {ci_text} "
                f"| `{signature}` |"
            )
    lines += [
        "",
        "Scores are sacreBLEU on detokenized output. A row named \"BLEU (tokenized, lowercased, Moses)\" is the "
        "literature's tokenized BLEU (lowercased, Moses-tokenized text, no further tokenization), given for "
        "comparison with papers only.",
        "",
    ]
    return lines


def _usage_section(repo: str, src_example: str, remote_code: bool = True) -> list[str]:
    if remote_code:
        intro = (
            "With transformers alone (the modeling code ships with the model, hence `trust_remote_code=True`, which "
            "the tokenizer needs too because it reads the model's config):"
        )
        kwargs = ", trust_remote_code=True"
    else:
        intro = "With transformers alone (a built-in `MarianMTModel`: no remote code):"
        kwargs = ""
    return [
        "## Usage",
        "",
        intro,
        "",
        "```python",
        "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{repo}"{kwargs})',
        f'model = AutoModelForSeq2SeqLM.from_pretrained("{repo}"{kwargs})',
        f'batch = tokenizer([{src_example!r}], return_tensors="pt", padding=True)',
        "output = model.generate(**batch)  # decoding defaults from generation_config.json (beam 4)",
        "print(tokenizer.batch_decode(output, skip_special_tokens=True))",
        "```",
        "",
        "With txkit (the paper's GNMT length penalty, length-sorted batches):",
        "",
        "```bash",
        f"txkit translate {repo} -i input.txt -o output.txt",
        "```",
        "",
    ]


def render_model_card(
    model_dir: str | os.PathLike,
    *,
    recipe=None,
    eval_report=None,
    training_info: dict | None = None,
    languages: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    license: str = "apache-2.0",
    model_name: str | None = None,
    repo_id: str | None = None,
):
    """The model card of a model folder as a `huggingface_hub.ModelCard` (see `write_model_card`)."""
    from huggingface_hub import ModelCard, ModelCardData

    model_dir = Path(model_dir)
    config = read_json(model_dir / "config.json", "model config") if (model_dir / "config.json").is_file() else {}
    if recipe is None:
        recipe = _near(model_dir, RECIPE_FILE)
    recipe = _recipe_dict(recipe)
    if training_info is None and (info_file := _near(model_dir, TRAINING_INFO_FILE)) is not None:
        training_info = read_json(info_file, "training info")
    if eval_report is None:
        reports = []
    else:
        reports = eval_report if isinstance(eval_report, (list, tuple)) else [eval_report]
        reports = [r if isinstance(r, dict) else read_json(r, "eval report") for r in reports]
    languages = list(languages) if languages else _languages_from(recipe)
    datasets = list(datasets) if datasets else _datasets_from(recipe)
    model_name = model_name or (repo_id.split("/")[-1] if repo_id else model_dir.resolve().name)
    repo = repo_id or "USER/MODEL"

    results = eval_results(reports, languages)
    data = ModelCardData(
        language=languages,
        license=license,
        library_name="transformers",
        pipeline_tag="translation",
        tags=list(TAGS),
        datasets=datasets,
        metrics=sorted({r.metric_type for r in results}) or None,
        model_name=model_name,
        eval_results=results or None,
    )
    pair = f" ({languages[0]} → {', '.join(languages[1:])})" if languages and len(languages) >= 2 else ""
    params = _count_parameters(model_dir)
    body = [
        f"# {model_name}",
        "",
        f"A translation model{pair}: the Transformer of [Attention Is All You Need]({_PAPER}) "
        "(Vaswani et al., 2017), an encoder-decoder trained from scratch with txkit on the Hugging Face stack"
        + (f", {_human(params)} parameters." if params else "."),
        "",
    ]
    if config:
        body += ["| architecture | |", "| --- | --- |"]
        body += [f"| {k} | {v} |" for k, v in _architecture_rows(config)]
        body.append("")
    body += _training_section(training_info, recipe)
    body += _scores_section(reports)
    src_example = "A man is riding a bicycle down the street." if not languages or languages[0] == "en" else "..."
    body += _usage_section(repo, src_example)
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)
    return ModelCard(content)


def write_model_card(model_dir: str | os.PathLike, **kwargs) -> Path:
    """Write the model card (README.md) of a model folder and return its path.

    Keyword arguments (all optional):
        recipe: the resolved recipe (dict, `Recipe`, or a YAML file); default: recipe.yaml of the folder
            or of the run directory it belongs to.
        eval_report: the JSON of `txkit eval --json` (dict or path), or a list of them (one per test set):
            its scores and sacreBLEU signatures go into the model-index and the scores table.
        training_info: steps, tokens seen, hardware, wall time, date; default: training_info.json of the
            folder or of its run directory.
        languages: [source, target] language codes; default: the recipe's data.src_lang / data.tgt_lang.
        datasets: training dataset ids; default: from the recipe's data.train.
        license: SPDX-style id for the metadata (default apache-2.0).
        model_name, repo_id: the name in the card and the id used in the usage example.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise TxkitError(f"{model_dir}: no such model folder")
    card = render_model_card(model_dir, **kwargs)
    path = model_dir / MODEL_CARD
    atomic.write_text(path, str(card))
    return path


# --------------------------------------------------------------------------------------------------
# Push
# --------------------------------------------------------------------------------------------------


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


_HTTP_CLIENTS = ("httpx", "httpx2", "requests", "urllib3")


def _is_transfer_error(exc: Exception) -> bool:
    """Connection failures and malformed answers (huggingface_hub's HTTP client raises its own classes)."""
    return isinstance(exc, (OSError, ValueError, RuntimeError)) or type(exc).__module__.split(".")[0] in _HTTP_CLIENTS


def _files_to_push(folder: Path) -> list[Path]:
    """The files of `folder` that a push uploads (relative paths, sorted), PUSH_IGNORE left out."""
    from huggingface_hub.utils import filter_repo_objects

    rel = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return [Path(p) for p in filter_repo_objects(rel, ignore_patterns=PUSH_IGNORE)]


PUSH_FORMATS = ("auto", "marian", "txkit")
_MARIAN_WHY = (
    "its configuration is one that transformers' built-in Marian architecture expresses exactly (the paper's "
    "post-norm Transformer with one shared vocabulary), so it loads with `AutoModelForSeq2SeqLM` and no remote "
    "code; its logits were checked equal to the txkit model's before upload"
)


def hub_form(folder: Path, format: str = "auto") -> tuple[str, str]:
    """The form `push` publishes a model folder in, and why: ("marian", why) for transformers' built-in
    `MarianMTModel` (what `auto` picks whenever Marian expresses the model exactly), ("txkit", why) for the
    folder as it is with its modeling code, ("folder", why) for a folder that is not a txkit model."""
    if format not in PUSH_FORMATS:
        raise TxkitError(f"--format {format!r}: choose one of {', '.join(PUSH_FORMATS)}")
    config = read_json(folder / "config.json", "model config")
    if config.get("model_type") != "txkit":
        if format == "marian":
            raise TxkitError(f"{folder}: --format marian converts txkit models, this is {config.get('model_type')!r}")
        return "folder", f"a {config.get('model_type')} model folder, uploaded as it is"
    if format == "txkit":
        return "txkit", "txkit's own form was asked for (`--format txkit`)"
    from txkit.export import marian_blockers
    from txkit.modeling import TxkitConfig

    blockers = marian_blockers(TxkitConfig.from_dict(config))
    if not blockers:
        return "marian", _MARIAN_WHY
    if format == "marian":
        raise TxkitError(f"{folder}: transformers' Marian architecture cannot express this model: " + "; ".join(blockers))
    return "txkit", "transformers' built-in Marian architecture cannot express it: " + "; ".join(blockers)


def card_for_form(card_text: str, form: str, why: str, repo_id: str) -> str:
    """A model card with a section saying which form the repository holds and why, and the usage example
    for that form (replacing the card's `## Usage` section)."""
    from huggingface_hub import ModelCard

    if form == "folder":
        return card_text
    languages = ModelCard(card_text).data.language or []
    src_example = "A man is riding a bicycle down the street." if not languages or languages[0] == "en" else "..."
    name = "transformers' built-in Marian architecture (`MarianMTModel`)" if form == "marian" else "txkit's form"
    section = ["## Form", "", f"This repository holds the model in {name}: {why}.", ""]
    if form == "marian":
        section[-1:] = [
            "",
            "The export renumbers the vocabulary (`<pad>` is the last id, as OPUS-MT and CTranslate2 expect) and "
            "reorders the model dimension to Marian's sinusoid layout; translations are txkit's.",
            "",
        ]
    block = "\n".join(section + _usage_section(repo_id, src_example, remote_code=form != "marian"))
    start = card_text.find("\n## Usage")
    if start < 0:
        return card_text.rstrip("\n") + "\n\n" + block
    end = card_text.find("\n## ", start + 1)
    return card_text[: start + 1] + block + (card_text[end + 1 :] if end >= 0 else "")


def _staged_upload(folder: Path, form: str, why: str, repo_id: str, staging: Path) -> list[tuple[str, object]]:
    """(path in the repository, file path or bytes) of everything a push uploads in `form`."""
    card_path = folder / MODEL_CARD
    card = card_for_form(card_path.read_text(encoding="utf-8"), form, why, repo_id).encode("utf-8")
    if form == "marian":
        from txkit.export import export_marian

        try:
            export_marian(folder, staging, verify=True)  # compares the logits of both models first
        except TxkitError as exc:
            raise TxkitError(f"push to {repo_id} refused, nothing uploaded: {exc} (--format txkit pushes as is)") from None
        source = staging
    else:
        source = folder
    files = [(p.as_posix(), source / p) for p in _files_to_push(source) if p.as_posix() != MODEL_CARD]
    return files + [(MODEL_CARD, card)]


def push(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
    token: str | None = None,
    format: str = "auto",
) -> str:
    """Upload a model folder (or a run directory's final model) to the Hub in one commit; return its URL.

    `format` "auto" publishes a txkit model as transformers' built-in `MarianMTModel` whenever that
    expresses it exactly (checked: equal logits) and in txkit's form with its modeling code otherwise;
    "marian" or "txkit" insist on one (see `hub_form`); the model card says which and why.
    Creates the repository if needed (and the branch `revision`), writes a model card into the folder first
    when it has none. The token comes from `token`, else `HF_TOKEN` or the stored login; the endpoint from
    `HF_ENDPOINT`. Errors become TxkitErrors whose message never contains the token.
    """
    import tempfile

    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise TxkitError(f"--repo {repo_id!r}: expected USER/NAME (or ORGANIZATION/NAME)")
    if not Path(model_dir).exists():
        raise TxkitError(f"{model_dir}: no such model folder or run directory")
    folder = Path(resolve_model(model_dir))
    check_model_folder(folder)  # a cut or edited file is named here, not uploaded
    form, why = hub_form(folder, format)
    token = token or get_token()
    if not token:
        raise TxkitError("no Hugging Face token: set HF_TOKEN or log in with `hf auth login`")
    if not (folder / MODEL_CARD).is_file():
        write_model_card(folder, repo_id=repo_id)

    endpoint = os.environ.get("HF_ENDPOINT") or None
    api = HfApi(endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory(prefix="txkit-push-") as tmp:
        uploads = _staged_upload(folder, form, why, repo_id, Path(tmp) / "marian")
        operations = [
            CommitOperationAdd(path_in_repo=path, path_or_fileobj=src if isinstance(src, bytes) else str(src))
            for path, src in uploads
        ]
        try:
            repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
            api.create_commit(
                repo_id,
                operations,
                commit_message=message or f"Upload {folder.name} with txkit",
                revision=revision,
                repo_type="model",
            )
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TxkitError(_scrub(f"push to {repo_id} failed (HTTP {status}): {first}", token)) from None
        except Exception as exc:
            if not _is_transfer_error(exc):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TxkitError(_scrub(f"push to {repo_id} failed ({type(exc).__name__}): {first}", token)) from None
    url = str(repo_url).rstrip("/")
    return f"{url}/tree/{revision}" if revision else url
