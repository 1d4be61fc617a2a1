"""txkit/atomic.py: what the user keeps gets the permissions any other program would have given it."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from txkit import atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_new_files_and_folders_follow_the_umask_not_tempfiles_private_mode(tmp_path, umask_022):
    """tempfile creates its temporaries 0600 / 0700; a model folder written that way could not be read by the
    account that serves it. New outputs get what `open` and `mkdir` give: 0644 and 0755 under umask 022."""
    atomic.write_text(tmp_path / "report.md", "hello\n")
    with atomic.writing_path(tmp_path / "model.safetensors") as tmp:
        tmp.write_bytes(b"weights")
    with atomic.building_dir(tmp_path / "model") as folder:
        (folder / "config.json").write_text("{}")
    assert _mode(tmp_path / "report.md") == 0o644
    assert _mode(tmp_path / "model.safetensors") == 0o644
    assert _mode(tmp_path / "model") == 0o755
    # the same calls under a stricter umask give stricter modes: the umask is read, not assumed
    os.umask(0o077)
    atomic.write_text(tmp_path / "private.md", "x")
    with atomic.building_dir(tmp_path / "private") as folder:
        pass
    assert _mode(tmp_path / "private.md") == 0o600
    assert _mode(tmp_path / "private") == 0o700


def test_a_replaced_output_keeps_the_mode_its_owner_gave_it(tmp_path, umask_022):
    final = tmp_path / "translations.de"
    final.write_text("old\n")
    final.chmod(0o640)
    atomic.write_text(final, "new\n")
    assert final.read_text() == "new\n" and _mode(final) == 0o640
    folder = tmp_path / "model"
    folder.mkdir()
    folder.chmod(0o750)
    with atomic.building_dir(folder) as tmp:
        (tmp / "config.json").write_text("{}")
    assert (folder / "config.json").exists() and _mode(folder) == 0o750
    # a read-only output is replaced (renaming needs only the folder's permission) and stays read-only
    final.chmod(0o444)
    atomic.write_text(final, "newer\n")
    assert final.read_text() == "newer\n" and _mode(final) == 0o444


def test_the_umask_is_read_without_changing_it(umask_022):
    assert atomic._umask() == 0o022
    assert os.umask(0o022) == 0o022  # still what it was


def test_txkit_average_writes_a_model_folder_others_can_read(tmp_path, trained_model):
    """The real command: `txkit average` builds its model folder through building_dir and writes weights,
    card and config; every file 0644 and the folder 0755 under umask 022."""
    import shutil

    ckpts = [shutil.copytree(trained_model, tmp_path / f"checkpoint-{i}") for i in (1, 2)]
    out = tmp_path / "averaged"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = f'umask 022 && exec "{sys.executable}" -m txkit average "{ckpts[0]}" "{ckpts[1]}" -o "{out}"'
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert _mode(out) == 0o755
    modes = {p.name: _mode(p) for p in out.iterdir() if p.is_file()}
    assert "model.safetensors" in modes, modes
    assert {k: oct(v) for k, v in modes.items() if v != 0o644} == {}
