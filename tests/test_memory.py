"""txkit.memory: a process that runs a txkit command keeps the memory its tensors free for the next ones, instead
of handing it back to the kernel and page-faulting it in again. Each case runs in a fresh Python process (malloc's
settings are process-wide and cannot be undone), which allocates and frees tensors the way a training step does
and counts its page faults."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from txkit.memory import keep_freed_memory

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="malloc's thresholds are glibc's",
)

# One training step's output layer and loss (txkit's fused loss on a 1500-token batch of the tiny recipe's shape,
# bf16 as CPU training runs it): chunks of 16 MB logits made and freed in turn. glibc's default gives the freed
# top of the heap back to the kernel, and the next chunk faults its pages in again.
_PROBE = """
import resource, torch
{setup}
from txkit.modeling.loss_txkit import linear_label_smoothed_nll
torch.manual_seed(0)
hidden = torch.randn(1500, 128, requires_grad=True)
weight = torch.randn(8000, 128, requires_grad=True)
labels = torch.randint(4, 8000, (1500,))
def faults_per_step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _, _ = linear_label_smoothed_nll(hidden, weight, labels, 0.1, 1)
        loss.backward()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4
faults_per_step()  # the first maps the memory whatever the settings
print(faults_per_step())
"""

# measured: ~10,000 faults a step with glibc's default, 0-150 with txkit.memory (heap growth in the first steps)
_MANY, _FEW = 3000, 1000


def _faults(setup: str, env: dict | None = None) -> float:
    environ = {k: v for k, v in os.environ.items() if k != "TXKIT_KEEP_FREED_MEMORY"} | (env or {})
    out = subprocess.run([sys.executable, "-c", _PROBE.format(setup=setup)], env=environ, capture_output=True,
                         text=True, check=True)  # fmt: skip
    return float(out.stdout.split()[-1])


def test_kept_memory_is_not_faulted_in_again():
    assert _faults("") > _MANY  # glibc's default: the freed tensors go back to the kernel
    setup = "from txkit.memory import keep_freed_memory\nassert keep_freed_memory()"
    assert _faults(setup) < _FEW


def test_the_cli_keeps_freed_memory_before_the_command_runs():
    # txkit's entry point with the command itself replaced: what main() sets up before any command runs
    setup = "import txkit.cli as cli\ncli.app = lambda **kwargs: None\ncli.main([])"
    assert _faults(setup) < _FEW
    assert _faults(setup, {"TXKIT_KEEP_FREED_MEMORY": "0"}) > _MANY  # the user's way out


@pytest.mark.parametrize("value", ["0", "no", "false", "OFF"])
def test_switched_off_by_the_environment(value):
    assert keep_freed_memory({"TXKIT_KEEP_FREED_MEMORY": value}) is False


def test_nothing_to_do_off_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert keep_freed_memory({}) is False


def test_a_bad_value_is_one_line_naming_the_variable():
    environ = os.environ | {"TXKIT_KEEP_FREED_MEMORY": "maybe"}
    out = subprocess.run([sys.executable, "-m", "txkit", "--version"], env=environ, capture_output=True, text=True)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == ["error: TXKIT_KEEP_FREED_MEMORY='maybe': expected 1 (keep freed memory, "
                                               "the default) or 0"]  # fmt: skip
