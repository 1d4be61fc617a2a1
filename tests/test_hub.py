"""Sharing: the model card, loading a model folder without txkit, and `txkit push` against a local
stand-in for the Hub (tests/hub_server.py) driven by the real huggingface_hub client.

The model is the small Multi30k model that tests/test_export.py trains (once per session).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import run_cli
from hub_server import HubServer

from txkit import hub
from txkit.errors import TxkitError

REPO = Path(__file__).resolve().parents[1]
N_LINES = 40  # test2016 sentences translated by txkit and by transformers' generate
MAX_NEW = 40
TRAINING_INFO = dict(
    steps=200, src_tokens=95_000, tgt_tokens=101_000, wall_time_s=18.5, hardware="CPU (2 cores)", date="2026-11-20"
)


@pytest.fixture(scope="module")
def model_folder(trained_model, tmp_path_factory) -> Path:
    """A copy of the trained model with a training record, as a run's final model has one."""
    folder = tmp_path_factory.mktemp("share") / "model"
    shutil.copytree(trained_model, folder)
    (folder / hub.TRAINING_INFO_FILE).write_text(json.dumps(TRAINING_INFO))
    return folder


@pytest.fixture(scope="module")
def sources(shared_data, tmp_path_factory) -> Path:
    lines = (shared_data / "multi30k" / "test2016.en").read_text(encoding="utf-8").splitlines()[:N_LINES]
    path = tmp_path_factory.mktemp("src") / "test.en"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def txkit_translate(model: str, src: Path, out: Path, *args: str, env: dict | None = None) -> list[str]:
    """`txkit translate MODEL -i SRC -o OUT ...`, in this process or (with env) in a fresh one."""
    argv = ["translate", model, "-i", str(src), "-o", str(out), "--max-len-a", "0", "--max-len-b", str(MAX_NEW), *args]
    if env is None:
        code, stdout, stderr = run_cli(argv)
        assert code == 0, stdout + stderr
    else:
        done = subprocess.run([sys.executable, "-m", "txkit", *argv], env=env, capture_output=True, text=True, cwd=REPO)
        assert done.returncode == 0, done.stderr[-3000:]
    return out.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def txkit_outputs(model_folder, sources, tmp_path_factory) -> dict[str, list[str]]:
    """txkit translate's greedy output, and its beam-4 output in transformers' length-penalty form."""
    out = tmp_path_factory.mktemp("hyp")
    return {
        "greedy": txkit_translate(str(model_folder), sources, out / "greedy.de", "--greedy"),
        "beam": txkit_translate(str(model_folder), sources, out / "beam.de", "-b", "4", "-a", "0.6", "--lp-form", "hf"),
    }


# A fresh interpreter in which `import txkit` fails: loads MODEL (a folder or a Hub id) with transformers
# alone and prints its greedy and/or beam-4 translations of SRC as JSON.
NO_TXKIT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["txkit"] = None
    try:
        import txkit
    except ImportError:
        pass
    else:
        raise SystemExit("txkit is importable")
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    model_id, src, max_new, searches = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split(",")
    if sys.argv[5] == "remote":  # txkit's form: its modeling code comes with it
        tok = AutoTokenizer.from_pretrained(model_id, trust_remote_code=True)  # it reads config.json's auto_map
        model = AutoModelForSeq2SeqLM.from_pretrained(model_id, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    else:  # the Marian form: transformers' own code, no remote code allowed
        tok = AutoTokenizer.from_pretrained(model_id)
        model = AutoModelForSeq2SeqLM.from_pretrained(model_id).eval()
        assert type(model).__name__ == "MarianMTModel" and type(model).__module__.startswith("transformers.models")
    lines = open(src, encoding="utf-8").read().splitlines()
    batch = tok(lines, return_tensors="pt", padding=True)
    out = {}
    with torch.no_grad():
        for name in searches:
            beams = {"greedy": 1, "beam": 4}[name]
            ids = model.generate(**batch, num_beams=beams, length_penalty=0.6, max_new_tokens=max_new, do_sample=False)
            out[name] = tok.batch_decode(ids, skip_special_tokens=True)
    print(json.dumps(out))
    """
)


def generate_without_txkit(
    model_id: str, src: Path, env: dict, cwd: Path, searches: str = "greedy,beam", code: str = "remote"
) -> dict[str, list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", NO_TXKIT_SCRIPT, model_id, str(src), str(MAX_NEW), searches, code],
        env=env, cwd=cwd, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def clean_env(tmp: Path, **extra: str) -> dict:
    """The environment of a child process: its own HF home and module cache, nothing on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_HOME=str(tmp / "hf_home"), HF_MODULES_CACHE=str(tmp / "modules"), PYTHONPATH="", **extra)
    env["OMP_NUM_THREADS"] = "1"  # a tiny model: one thread (see conftest)
    return env


# --------------------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------------------


def test_model_card_metadata_parses_and_its_scores_are_the_eval_reports(
    model_folder, sources, txkit_outputs, shared_data, tmp_path
):
    from huggingface_hub import ModelCard

    from txkit.evaluation import build_report, write_report
    from txkit.options import ScoreOptions
    from txkit.recipe import load_recipe

    ref_path = shared_data / "multi30k" / "test2016.de"
    refs = ref_path.read_text(encoding="utf-8").splitlines()[:N_LINES]
    report = build_report(
        txkit_outputs["beam"], [refs], system={"path": "beam.de", "lines": N_LINES},
        references=[{"path": str(ref_path), "lines": N_LINES}], options=ScoreOptions(bootstrap=100),
    )  # fmt: skip
    write_report(tmp_path / "report.json", report)
    recipe = load_recipe(REPO / "tests" / "recipes" / "tiny.yaml").to_dict()

    path = hub.write_model_card(model_folder, recipe=recipe, eval_report=tmp_path / "report.json", repo_id="user/tiny")
    card = ModelCard.load(path)
    data = card.data
    assert data.language == ["en", "de"] and data.license == "apache-2.0"
    assert {"translation", "txkit"} <= set(data.tags) and data.datasets == ["multi30k"]
    by_metric = {r.metric_type: r for r in data.eval_results}
    assert set(by_metric) == {"bleu", "chrf"}
    for metric, result in report["scores"].items():
        assert by_metric[metric].metric_value == round(result["score"], 2)
        assert by_metric[metric].metric_args == {"signature": result["signature"]}
        assert by_metric[metric].dataset_name == "multi30k test2016" and by_metric[metric].task_type == "translation"
        assert result["signature"].replace("|", "\\|") in card.text  # the scores table escapes its pipes
    assert data.model_name == "tiny"
    for fact in ("steps: 200", "CPU (2 cores)", "max_steps: 20", "from_pretrained", ".generate(", "user/tiny"):
        assert fact in card.text, fact
    # the card's usage example runs as written: the folder's own tokenizer and model
    assert 'AutoModelForSeq2SeqLM.from_pretrained("user/tiny", trust_remote_code=True)' in card.text


def test_card_rejects_a_report_without_scores(model_folder, tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"system": {}}))
    with pytest.raises(TxkitError, match="no 'scores'"):
        hub.render_model_card(model_folder, eval_report=tmp_path / "bad.json")


# --------------------------------------------------------------------------------------------------
# Loading without txkit
# --------------------------------------------------------------------------------------------------


def test_model_folder_loads_without_txkit_and_generates_as_txkit_translate(
    model_folder, sources, txkit_outputs, tmp_path
):
    got = generate_without_txkit(str(model_folder), sources, clean_env(tmp_path, HF_HUB_OFFLINE="1"), cwd=tmp_path)
    assert got == txkit_outputs
    assert len(set(got["greedy"])) > N_LINES // 2  # translations depend on the input


# --------------------------------------------------------------------------------------------------
# Push
# --------------------------------------------------------------------------------------------------


def _folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_push_uploads_the_folder_in_one_commit_and_the_token_goes_only_in_the_auth_header(
    model_folder, sources, txkit_outputs, tmp_path
):
    token = "hf_" + secrets.token_hex(16)
    with HubServer(token) as server:
        env = clean_env(
            tmp_path, HF_ENDPOINT=server.url, HF_TOKEN=token, HF_HUB_DISABLE_XET="1", HF_HUB_OFFLINE="0",
            HF_HUB_DISABLE_TELEMETRY="1",
        )  # fmt: skip
        argv = ["push", str(model_folder), "--repo", "user/tiny", "--private", "--message", "first release"]
        argv += ["--format", "txkit"]  # the folder as it is, with its modeling code
        done = subprocess.run([sys.executable, "-m", "txkit", *argv], env=env, capture_output=True, text=True, cwd=REPO)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip().splitlines()[-1] == f"{server.url}/user/tiny"

        # the repository exists, is private, and main is one commit on top of the creation
        repo = server.repos["user/tiny"]
        assert repo.private
        head = repo.commits[repo.branches["main"]]
        assert head["message"] == "first release" and repo.commits[head["parent"]]["parent"] is None
        # what arrived is exactly the folder, byte for byte (the weights through git-LFS), but for the card,
        # which now says which form this is and why
        files = head["files"]
        card = files.pop("README.md").decode()
        assert files == {k: v for k, v in _folder_files(model_folder).items() if k != "README.md"}
        assert "model.safetensors" in head["lfs"]
        assert "## Form" in card and "`--format txkit`" in card and "trust_remote_code=True" in card

        # the token travelled in the Authorization header and nowhere else
        authorized = [r for r in server.requests if r.headers.get("authorization") == f"Bearer {token}"]
        assert {r.path for r in authorized} >= {"/api/repos/create", "/api/models/user/tiny/commit/main"}
        for request in server.requests:
            assert token.encode() not in request.body, request.path
            assert token not in request.path
            for name, value in request.headers.items():
                assert token not in value or name == "authorization", (request.path, name)
        assert token not in done.stdout + done.stderr
        for folder in (model_folder, tmp_path / "hf_home"):
            for path in folder.rglob("*"):
                assert not path.is_file() or token.encode() not in path.read_bytes(), path

        # every command that takes a model takes the Hub id: txkit translate, from the stand-in
        out = txkit_translate("user/tiny", sources, tmp_path / "hub.de", "--greedy", env=env)
        assert out == txkit_outputs["greedy"]
        # and transformers alone, without txkit, loads it from the Hub id too
        got = generate_without_txkit("user/tiny", sources, env, cwd=tmp_path, searches="greedy")
        assert got == {"greedy": txkit_outputs["greedy"]}


def test_push_to_a_branch_creates_it_and_errors_never_show_the_token(model_folder, tmp_path, monkeypatch):
    import huggingface_hub.constants

    token = "hf_" + secrets.token_hex(16)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)  # the stand-in speaks git-LFS
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with HubServer(token) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        with pytest.raises(TxkitError, match="no Hugging Face token"):
            hub.push(model_folder, "user/tiny")

        wrong = "hf_" + secrets.token_hex(16)
        with pytest.raises(TxkitError, match="HTTP 401") as error:
            hub.push(model_folder, "user/tiny", token=wrong)
        assert wrong not in str(error.value)
        with pytest.raises(TxkitError, match="USER/NAME"):
            hub.push(model_folder, "not a repo id", token=token)

        url = hub.push(model_folder, "user/tiny", revision="dev", message="on a branch", token=token, format="txkit")
        assert url == f"{server.url}/user/tiny/tree/dev"
        repo = server.repos["user/tiny"]
        assert not repo.private and set(repo.branches) == {"main", "dev"}
        assert repo.files("main") == {}  # only the branch got the files
        pushed = repo.files("dev")
        assert pushed.pop("README.md") != (model_folder / "README.md").read_bytes()  # it names the form
        assert pushed == {k: v for k, v in _folder_files(model_folder).items() if k != "README.md"}
        assert repo.commits[repo.branches["dev"]]["message"] == "on a branch"


def test_push_publishes_the_papers_model_as_a_builtin_marian_model(model_folder, sources, txkit_outputs, tmp_path):
    """By default a model Marian expresses goes up as a `MarianMTModel`: transformers alone loads it with no
    remote code and no txkit, its translations are txkit's, and `txkit translate` on it gives the same as on
    the txkit form."""
    token = "hf_" + secrets.token_hex(16)
    with HubServer(token) as server:
        env = clean_env(
            tmp_path, HF_ENDPOINT=server.url, HF_TOKEN=token, HF_HUB_DISABLE_XET="1", HF_HUB_OFFLINE="0",
            HF_HUB_DISABLE_TELEMETRY="1",
        )  # fmt: skip
        argv = ["push", str(model_folder), "--repo", "user/tiny-marian"]
        done = subprocess.run([sys.executable, "-m", "txkit", *argv], env=env, capture_output=True, text=True, cwd=REPO)
        assert done.returncode == 0, done.stderr[-3000:]
        files = server.repos["user/tiny-marian"].files("main")
        assert not any(name.endswith(".py") for name in files)  # no modeling code
        config = json.loads(files["config.json"])
        assert config["model_type"] == "marian" and "auto_map" not in config
        card = files["README.md"].decode()
        assert "built-in Marian architecture" in card and "checked equal" in card
        assert 'AutoModelForSeq2SeqLM.from_pretrained("user/tiny-marian")' in card and "trust_remote_code" not in card

        got = generate_without_txkit("user/tiny-marian", sources, env, cwd=tmp_path, code="builtin")
        assert got == txkit_outputs
        out = tmp_path / "hub"
        out.mkdir()
        hub_greedy = txkit_translate("user/tiny-marian", sources, out / "greedy.de", "--greedy", env=env)
        hub_beam = txkit_translate(
            "user/tiny-marian", sources, out / "beam.de", "-b", "4", "-a", "0.6", "--lp-form", "hf", env=env
        )
        assert {"greedy": hub_greedy, "beam": hub_beam} == txkit_outputs


def test_push_refuses_a_marian_form_whose_logits_differ_and_a_model_marian_cannot_express(
    model_folder, tmp_path, monkeypatch
):
    import huggingface_hub.constants
    import torch

    from txkit import export
    from txkit.modeling import TxkitConfig, TxkitForConditionalGeneration

    token = "hf_" + secrets.token_hex(16)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    plain_state_dict = export.marian_state_dict

    def off_by_a_little(*args, **kwargs):  # a mapping bug: one matrix's rows in the wrong order
        state = plain_state_dict(*args, **kwargs)
        key = next(k for k in state if k.endswith("fc1.weight"))
        state[key] = state[key].flip(0)
        return state

    with HubServer(token) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setattr(export, "marian_state_dict", off_by_a_little)
        with pytest.raises(TxkitError, match="refused, nothing uploaded: Marian export: .*logits differ"):
            hub.push(model_folder, "user/tiny", token=token)
        assert "user/tiny" not in server.repos  # nothing was created
        monkeypatch.setattr(export, "marian_state_dict", plain_state_dict)

        # pre-norm: Marian cannot express it, so auto pushes txkit's form and says why; marian refuses
        pre_norm = tmp_path / "pre-norm"
        config = TxkitConfig(vocab_size=40, d_model=16, attention_heads=2, ffn_dim=32, encoder_layers=1,
                             decoder_layers=1, normalize_before=True)  # fmt: skip
        torch.manual_seed(0)
        TxkitForConditionalGeneration(config).save_pretrained(pre_norm)
        with pytest.raises(TxkitError, match="Marian architecture cannot express this model: normalize_before"):
            hub.push(pre_norm, "user/pre", token=token, format="marian")
        hub.push(pre_norm, "user/pre", token=token)
        files = server.repos["user/pre"].files("main")
        assert "modeling_txkit.py" in files and json.loads(files["config.json"])["model_type"] == "txkit"
        card = files["README.md"].decode()
        assert "cannot express it: normalize_before=true (pre-norm)" in card and "trust_remote_code=True" in card


def test_target_lang_reads_the_directions_from_the_recipe_pushed_with_a_hub_model(tmp_path, monkeypatch):
    """`txkit translate USER/NAME --target-lang xx` fetches the repository's recipe.yaml through the real client from
    the stand-in Hub: a language the model was not trained into is one line listing the ones it was (before any
    weights are downloaded); a repository without a recipe says so."""
    import huggingface_hub.constants
    from huggingface_hub import HfApi

    token = "hf_" + secrets.token_hex(16)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)  # the stand-in speaks git-LFS
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the suite is offline; this server is local
    recipe = "data:\n  src_lang: en\n  tgt_lang: de\n  train:\n" + "".join(
        f"    - {{path: multi30k/train, tag: '<2{lang}>', tgt_lang: {lang}}}\n" for lang in ("de", "fr"))
    source = tmp_path / "in.en"
    source.write_text("A dog runs.\n", encoding="utf-8")
    with HubServer(token) as server:
        api = HfApi(endpoint=server.url, token=token)
        for name, files in (("user/dirs", {"recipe.yaml": recipe.encode()}), ("user/bare", {"config.json": b"{}"})):
            api.create_repo(name)
            for path, data in files.items():
                api.upload_file(path_or_fileobj=data, path_in_repo=path, repo_id=name)
        env = clean_env(tmp_path, HF_ENDPOINT=server.url, HF_HUB_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1")
        for model, expected in (
            ("user/dirs", "error: --target-lang cs: user/dirs was not trained to translate into cs (its target "
                          "languages: de, fr)"),
            ("user/bare", "error: --target-lang cs: user/bare: it has no recipe.yaml; name the direction's tag with --tag"),
        ):  # fmt: skip
            done = subprocess.run([sys.executable, "-m", "txkit", "translate", model, "--target-lang", "cs",
                                   "-i", str(source)], env=env, capture_output=True, text=True, cwd=REPO)  # fmt: skip
            assert done.returncode == 2, done.stderr[-2000:]
            assert done.stderr.strip().splitlines()[-1].startswith(expected), done.stderr[-2000:]
            assert "Traceback" not in done.stderr
