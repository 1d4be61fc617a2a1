"""txkit: the Transformer of "Attention Is All You Need", trained from scratch on the Hugging Face stack.

Importing txkit is cheap; the model classes load (and register with the Auto classes) on first use:
``txkit.TxkitConfig`` and ``txkit.TxkitForConditionalGeneration``.
"""

__version__ = "0.1.0"

__all__ = ["TxkitConfig", "TxkitForConditionalGeneration", "TxkitError", "__version__"]

import importlib.abc
import importlib.util
import sys

from txkit.errors import TxkitError  # noqa: E402  (light: no torch)


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
