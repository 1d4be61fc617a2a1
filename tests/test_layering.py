"""The modules form stages that only look forward: no module imports from a later stage (function-level
imports included), and the modeling files copied into saved models import nothing from txkit.

Stages, in the data's order (README, Layout):
    0 text and errors      1 recipe schema          2 tokenization and data    3 model
    4 training, decoding   5 evaluation             6 sharing                  7 pipeline     8 CLI
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "txkit"

STAGES: dict[str, list[str]] = {
    "text and errors": ["txkit", "txkit.errors", "txkit.textio", "txkit.atomic", "txkit.threads"],
    "recipe schema": ["txkit.options", "txkit.recipe", "txkit.corpus_spec", "txkit.runs"],
    "tokenization and data": ["txkit.modelfiles", "txkit.tokenization", "txkit.data", "txkit.batching", "txkit.subword_sampling", "txkit.mixing", "txkit.prepare", "txkit.fetch"],
    "model": ["txkit.modeling"],
    "training and decoding": ["txkit.thread_stable", "txkit.schedule", "txkit.train_state", "txkit.checkpointing", "txkit.training", "txkit.ema",
                              "txkit.train_setup", "txkit.averaging", "txkit.search", "txkit.step_decoder",
                              "txkit.decoding", "txkit.ensemble"],
    "evaluation": ["txkit.evaluation", "txkit.metrics"],
    "sharing": ["txkit.hub", "txkit.export", "txkit.report", "txkit.serving", "txkit.engines"],
    "pipeline": ["txkit.pipeline_eval", "txkit.pipeline", "txkit.distill"],
    "cli": ["txkit.cli", "txkit.__main__"],
}  # fmt: skip

# The training stage's modules, which must import nothing from averaging, export, hub or report ...
TRAINING = {"txkit.schedule", "txkit.train_state", "txkit.checkpointing", "txkit.training", "txkit.train_setup",
            "txkit.batching", "txkit.ema", "txkit.subword_sampling"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage_of(module: str) -> int:
    """The stage of a module: the longest declared name that is it or a package above it."""
    best, stage = "", None
    for index, names in enumerate(STAGES.values()):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > len(best):
                best, stage = name, index
    if stage is None:
        raise AssertionError(f"{module} is in no stage: add it to STAGES (and to README's Layout)")
    return stage


def txkit_imports(path: Path) -> set[str]:
    """Every txkit module `path` imports, at module level or inside functions."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from txkit import hub` imports the module txkit.hub
            found.update(f"{target}.{alias.name}" for alias in node.names
                         if (PACKAGE.parent / f"{target}.{alias.name}".replace(".", "/")).with_suffix(".py").is_file())
    return {name for name in found if name == "txkit" or name.startswith("txkit.")} - {module}


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_no_module_imports_from_a_later_stage(path):
    module = module_name(path)
    if module == "txkit":
        return  # the package itself: registers the model with transformers when transformers loads
    stage = stage_of(module)
    later = sorted(name for name in txkit_imports(path) if stage_of(name) > stage)
    assert not later, f"{module} (stage {list(STAGES)[stage]}) imports from later stages: {later}"


def test_training_imports_nothing_from_averaging_export_hub_or_report():
    sharing = {"txkit.averaging", "txkit.export", "txkit.hub", "txkit.report"}
    for path in MODULES:
        module = module_name(path)
        if module in TRAINING:
            bad = {(module, name) for name in txkit_imports(path) if name in sharing}
            assert not bad, f"{module} imports {sorted(name for _, name in bad)}"


def test_modeling_imports_nothing_from_txkit():
    """The modeling files are copied into every saved model, which loads without txkit."""
    for path in (PACKAGE / "modeling").glob("*_txkit.py"):
        outside = {name for name in txkit_imports(path) if not name.startswith("txkit.modeling")}
        assert not outside, f"{path.name} imports {sorted(outside)}"


def test_the_check_sees_function_level_imports(tmp_path):
    """A module that imports a later stage inside a function is caught (the check reads the whole tree)."""
    source = PACKAGE / "textio.py"
    text = source.read_text(encoding="utf-8") + "\n\ndef _late():\n    from txkit.pipeline import run_pipeline\n"
    fake = tmp_path / "txkit" / "textio.py"
    fake.parent.mkdir()
    fake.write_text(text, encoding="utf-8")
    globals()["PACKAGE"] = tmp_path / "txkit"  # module names are taken relative to it
    try:
        assert "txkit.pipeline" in txkit_imports(fake)
        with pytest.raises(AssertionError, match="imports from later stages"):
            test_no_module_imports_from_a_later_stage(fake)
    finally:
        globals()["PACKAGE"] = Path(__file__).resolve().parents[1] / "txkit"
