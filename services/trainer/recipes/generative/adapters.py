"""Ludwig's `adapter` section as PEFT builds it, and starting from saved adapter weights.

Each `adapter.type` maps to PEFT's config class with Ludwig's field names (LoRA and AdaLoRA rename
a few); what PEFT saves loads with stock `peft`. `pretrained_adapter_weights` (a folder with
adapter_config.json) continues training that adapter, as Ludwig does, instead of a fresh one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from tunewire.config import llm as C

# adapter class -> PEFT's config class, which takes the adapter's fields under the same names
# (all but those that are ours: `Adapter`'s type, weights to continue from, postprocessor).
SAME_NAMES = {
    C.Ia3Adapter: "IA3Config",
    C.LohaAdapter: "LoHaConfig",
    C.LokrAdapter: "LoKrConfig",
    C.VeraAdapter: "VeraConfig",
    C.FourierftAdapter: "FourierFTConfig",
    C.OftAdapter: "OFTConfig",
    C.BoftAdapter: "BOFTConfig",
    C.HraAdapter: "HRAConfig",
    C.LnTuningAdapter: "LNTuningConfig",
}
OURS = ("type", "pretrained_adapter_weights", "postprocessor")


def peft_config(adapter: C.Adapter, total_steps: int, patterns: dict | None = None):
    """PEFT's config for the job's `adapter` section (`total_steps`: AdaLoRA's default budget;
    `patterns`: the rank_pattern/alpha_pattern EVA settled on, to rebuild a trained model)."""
    import peft
    from peft.tuners.lora.config import CordaConfig

    task = peft.TaskType.CAUSAL_LM
    if isinstance(adapter, C.LoraAdapter):
        # LoRA's keys that AdaLoRA reads too (its config refuses the others at other values).
        lora = {
            "task_type": task,
            "lora_alpha": adapter.alpha,
            "lora_dropout": adapter.dropout,
            "target_modules": adapter.target_modules,
            "bias": adapter.bias_type,
        }
        if isinstance(adapter, C.AdaloraAdapter):
            return peft.AdaLoraConfig(
                **lora,
                target_r=adapter.target_r,
                init_r=adapter.init_r,
                tinit=adapter.tinit,
                tfinal=adapter.tfinal,
                deltaT=adapter.delta_t,
                beta1=adapter.beta1,
                beta2=adapter.beta2,
                orth_reg_weight=adapter.orth_reg_weight,
                total_step=adapter.total_step or total_steps,
            )
        return peft.LoraConfig(
            **lora,
            r=adapter.r,
            use_rslora=adapter.use_rslora,
            use_dora=adapter.use_dora,
            # LoftQ's weights are set after PEFT builds the layers (loftq_initialise); PEFT's own
            # "loftq" would quantize an already quantized base again.
            init_lora_weights=(
                True
                if adapter.init_lora_weights in ("default", "loftq")
                else adapter.init_lora_weights
            ),
            eva_config=(
                None
                if adapter.eva_config is None
                else peft.EvaConfig(**dataclasses.asdict(adapter.eva_config))
            ),
            corda_config=CordaConfig() if adapter.init_lora_weights == "corda" else None,
            **(patterns or {}),
        )
    cls_name = SAME_NAMES.get(type(adapter))
    if cls_name is None:
        raise TypeError(f"unknown adapter {type(adapter).__name__}")
    kwargs = {
        f.name: getattr(adapter, f.name) for f in dataclasses.fields(adapter) if f.name not in OURS
    }
    return getattr(peft, cls_name)(task_type=task, **kwargs)


def apply(
    model: nn.Module,
    adapter: C.Adapter,
    total_steps: int,
    *,
    autocast_adapter_dtype: bool = True,
    calibration: Callable[[], list[dict]] | None = None,
    patterns: dict | None = None,
) -> nn.Module:
    """`model` with the adapter: fresh from the job's section, or the saved one at
    `adapter.pretrained_adapter_weights`, trainable. An initialisation that reads data (EVA)
    runs over `calibration()`'s batches (the job's training data) before training."""
    from peft import PeftModel, get_peft_model

    if adapter.pretrained_adapter_weights:
        return PeftModel.from_pretrained(
            model,
            adapter.pretrained_adapter_weights,
            is_trainable=True,
            autocast_adapter_dtype=autocast_adapter_dtype,
        )
    config = peft_config(adapter, total_steps, patterns)
    if getattr(adapter, "init_lora_weights", None) == "corda":
        _corda_statistics(model, config, calibration)
    model = get_peft_model(model, config, autocast_adapter_dtype=autocast_adapter_dtype)
    if getattr(adapter, "init_lora_weights", None) == "loftq":
        loftq_initialise(model)
    if getattr(adapter, "init_lora_weights", None) == "eva" and patterns is None:
        from peft import initialize_lora_eva_weights

        if calibration is None:
            raise ValueError("init_lora_weights: eva needs the training data's batches")
        from services.trainer.recipes.generative.calibration import bounded_forward

        batches = calibration()
        initialize_lora_eva_weights(
            model, batches, forward_fn=bounded_forward(len(batches)), show_progress_bar=False
        )
    return model


def loftq_initialise(model: nn.Module) -> None:
    """LoftQ on the 4-bit base (PEFT's replace_lora_weights_loftq, the one-step LoftQ it offers
    for a base bitsandbytes has quantized): each adapted layer's B A becomes the best rank-r
    approximation of W - dequant(Q(W)), W read from the base's safetensors files. PEFT sets B A
    to that residual whatever alpha/r; both factors are divided by sqrt(alpha/r) here, so the
    layer starts at Q(W) + residual, LoftQ's meaning. The adapter keeps its dtype."""
    from pathlib import Path

    from peft import replace_lora_weights_loftq
    from peft.tuners.lora.bnb import Linear4bit

    from services.trainer.recipes.generative.errors import PreconditionError

    layers = [m for m in model.modules() if isinstance(m, Linear4bit) and "default" in m.lora_A]
    if not layers:
        raise PreconditionError(
            "adapter.init_lora_weights: loftq found no 4-bit layer with an adapter (target "
            "the base's linear layers)"
        )
    dtype = layers[0].lora_A["default"].weight.dtype
    name = model.get_base_model().config._name_or_path
    try:
        replace_lora_weights_loftq(model, model_path=name if Path(name).is_dir() else None)
    except (ValueError, OSError) as exc:
        raise PreconditionError(
            f"adapter.init_lora_weights: loftq reads the base's full-precision weights from its "
            f"safetensors files, which failed: {exc}"
        ) from None
    for layer in layers:
        root = float(layer.scaling["default"]) ** 0.5
        for factor in (layer.lora_A["default"], layer.lora_B["default"]):
            factor.weight.data = (factor.weight.data / root).to(dtype)


def _corda_statistics(model: nn.Module, config, calibration) -> None:
    """CorDA's covariance of each adapted layer's inputs over the calibration rows."""
    from peft.tuners.lora.corda import preprocess_corda

    if calibration is None:
        raise ValueError("init_lora_weights: corda needs the training data's rows")
    rows = calibration()

    @torch.no_grad()
    def run_model() -> None:
        for row in rows:
            model(**row)

    preprocess_corda(model, config, run_model=run_model)


def corda_initial(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The adapter CorDA initialised (None for any other adapter), on the CPU: what the base's
    residual was cut by, needed to save the trained adapter against the original base."""
    config = getattr(model, "peft_config", {}).get("default")
    if getattr(config, "init_lora_weights", None) != "corda":
        return None
    return {
        name: p.detach().to("cpu", copy=True)
        for name, p in model.named_parameters()
        if "lora_A" in name or "lora_B" in name
    }


def corda_as_lora(
    adapter: C.LoraAdapter, trained: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]
) -> tuple[C.LoraAdapter, dict[str, torch.Tensor]]:
    """The trained CorDA adapter as a plain LoRA of the original base (PEFT's conversion):
    W = W_res + B0 A0 and W + dW = W_res + B A, so dW = [B | -B0] [A ; A0], rank 2r at the same
    scaling. `trained` keys may carry a wrapper prefix before the model's parameter names."""
    out = {}
    for key, value in trained.items():
        name = next((n for n in initial if key.endswith(n)), None)
        if name is None:
            out[key] = value
        elif "lora_A" in name:
            out[key] = torch.cat([value, initial[name].to(value.dtype)], dim=0)
        else:
            out[key] = torch.cat([value, -initial[name].to(value.dtype)], dim=1)
    alpha = adapter.alpha * (2**0.5 if adapter.use_rslora else 2)
    plain = dataclasses.replace(adapter, r=2 * adapter.r, alpha=alpha, init_lora_weights="default")
    return plain, out


def eva_patterns(model: nn.Module) -> dict | None:
    """The ranks and scalings EVA settled on (None for any other adapter), so the artifact's
    fresh copy of the model is built with the trained layers' shapes."""
    config = getattr(model, "peft_config", {}).get("default")
    if getattr(config, "init_lora_weights", None) != "eva":
        return None
    return {"rank_pattern": dict(config.rank_pattern), "alpha_pattern": dict(config.alpha_pattern)}
