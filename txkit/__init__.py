"""txkit: the Transformer of "Attention Is All You Need", trained from scratch on the Hugging Face stack.

Importing txkit is cheap; the model classes load (and register with the Auto classes) on first use:
``txkit.TxkitConfig`` and ``txkit.TxkitForConditionalGeneration``.
"""

__version__ = "0.1.0"

__all__ = ["TxkitConfig", "TxkitForConditionalGeneration", "TxkitError", "__version__"]

import importlib.abc
import importlib.util
import os
import sys

from txkit.errors import TxkitError  # noqa: E402  (light: no torch)

# Training must not depend on the CPU thread count (txkit.threads.ThreadGovernor changes it between steps; exact
# resume). On some CPUs MKL's matrix products split their summed dimension between threads: on a 2-core Intel
# Xeon with AMX (2026-12-07) a Linear layer's weight gradient, (512 x 3000) @ (3000 x 128), differed in its last
# bits between 1 and 2 threads, where the AMD EPYC of earlier runs gave the same bits. MKL's strict conditional
# numerical reproducibility keeps gemm's summation order independent of the thread count; MKL reads the
# variable at its first call, so it is set on import, unless the user chose a mode. Cost: none measured (200 such
# products at 2 threads 0.54 against 0.55 s; CTranslate2 decoding 200.7 against 200.1 sentences/s).
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")


def _register_with_transformers() -> None:
    if "txkit.modeling" in sys.modules:
        return  # txkit.modeling is being imported: it registers itself when done
    from txkit.modeling import register

    register()


class _RegisterWhenTransformersLoads(importlib.abc.MetaPathFinder):
    """`import txkit` registers TxkitConfig / TxkitForConditionalGeneration with the Auto classes.

    Registering means importing torch and transformers (seconds), which `txkit --help` must not pay.
    So registration waits until the program itself imports transformers, and happens right after.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register_with_transformers()

        spec.loader.exec_module = exec_then_register
        return spec


if "transformers" in sys.modules:
    _register_with_transformers()
elif not any(isinstance(f, _RegisterWhenTransformersLoads) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenTransformersLoads())


def __getattr__(name):
    # Lazy so that `txkit --help` never imports torch or transformers.
    if name in ("TxkitConfig", "TxkitForConditionalGeneration"):
        from txkit import modeling

        return getattr(modeling, name)
    raise AttributeError(f"module 'txkit' has no attribute {name!r}")
