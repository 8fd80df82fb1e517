"""The PEFT adapters Ludwig lists beyond LoRA/AdaLoRA/IA3, and starting from saved adapter weights.

Each `adapter.type` maps to PEFT's config class with Ludwig's field names; what PEFT saves loads
with stock `peft`. `pretrained_adapter_weights` (a folder with adapter_config.json) continues
training that adapter, as Ludwig does, instead of a fresh one.
"""

from __future__ import annotations

from torch import nn

from tunewire.config import llm as C

# adapter class -> (PEFT config class name, fields passed through under the same name)
_SIMPLE = {
    C.LohaAdapter: ("LoHaConfig", ("r", "alpha", "target_modules")),
    C.LokrAdapter: ("LoKrConfig", ("r", "alpha", "target_modules")),
    C.VeraAdapter: ("VeraConfig", ("r", "target_modules", "projection_prng_key")),
    C.FourierftAdapter: ("FourierFTConfig", ("n_frequency", "scaling", "target_modules")),
    C.OftAdapter: (
        "OFTConfig",
        ("r", "oft_block_size", "module_dropout", "target_modules", "coft", "eps"),
    ),
    C.BoftAdapter: (
        "BOFTConfig",
        ("boft_block_size", "boft_n_butterfly_factor", "boft_dropout", "target_modules"),
    ),
    C.HraAdapter: ("HRAConfig", ("r", "apply_GS", "target_modules")),
    C.LnTuningAdapter: ("LNTuningConfig", ("target_modules",)),
}


def simple_peft_config(adapter):
    """PEFT's config for one of the adapters in `_SIMPLE`, or None for another type."""
    import peft

    entry = _SIMPLE.get(type(adapter))
    if entry is None:
        return None
    cls_name, fields = entry
    kwargs = {name: getattr(adapter, name) for name in fields}
    return getattr(peft, cls_name)(task_type=peft.TaskType.CAUSAL_LM, **kwargs)


def apply(model: nn.Module, adapter, config, *, autocast_adapter_dtype: bool = True) -> nn.Module:
    """`model` with the adapter: fresh from `config`, or the saved one at
    `adapter.pretrained_adapter_weights`, trainable."""
    from peft import PeftModel, get_peft_model

    path = getattr(adapter, "pretrained_adapter_weights", None)
    if path:
        return PeftModel.from_pretrained(
            model, path, is_trainable=True, autocast_adapter_dtype=autocast_adapter_dtype
        )
    return get_peft_model(model, config, autocast_adapter_dtype=autocast_adapter_dtype)
