"""The Transformer as a transformers model: TxkitConfig and TxkitForConditionalGeneration."""

from .configuration_txkit import PRESETS, TxkitConfig
from .modeling_txkit import TxkitForConditionalGeneration, TxkitModel

__all__ = ["PRESETS", "TxkitConfig", "TxkitForConditionalGeneration", "TxkitModel", "register"]

_registered = False


def register() -> None:
    """Register with AutoConfig / AutoModel / AutoModelForSeq2SeqLM, and mark both classes for `auto_map`, so a saved
    folder carries the code files and loads with `trust_remote_code=True` without txkit."""
    global _registered
    if _registered:
        return
    from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

    AutoConfig.register("txkit", TxkitConfig, exist_ok=True)
    AutoModel.register(TxkitConfig, TxkitModel, exist_ok=True)
    AutoModelForSeq2SeqLM.register(TxkitConfig, TxkitForConditionalGeneration, exist_ok=True)
    TxkitConfig.register_for_auto_class()
    TxkitForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
    _registered = True


register()
