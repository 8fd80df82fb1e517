"""Building the model a generative job trains: base (optionally 4/8-bit), adapter, checkpointing,
the loss wrapper, and its placement across processes (DDP or FSDP2)."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable

import torch
from torch import nn

from services.trainer.recipes.generative import adapters, attention
from services.trainer.recipes.generative.data import Batch
from services.trainer.recipes.generative.errors import PreconditionError
from services.trainer.recipes.generative.loss import LossStats, linear_cross_entropy
from tunewire.block_compile import compile_blocks
from tunewire.config.llm import LlmConfig
from tunewire.devices import compute_dtype


def load_tokenizer(base: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    if tok.eos_token_id is None:
        raise PreconditionError(f"the tokenizer of {base!r} has no EOS token; targets need one")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def quantization_config(cfg: LlmConfig, device: torch.device):
    """bitsandbytes settings, or a clear refusal where bitsandbytes or CUDA is missing."""
    q = cfg.quantization
    if q is None:
        return None
    # LoftQ's quantization is implied when the config has none: name the key the user wrote.
    key = (
        "adapter.init_lora_weights: loftq (a 4-bit bitsandbytes base)"
        if getattr(cfg.adapter, "init_lora_weights", None) == "loftq"
        else f"quantization.bits: {q.bits}"
    )
    if device.type != "cuda":
        raise PreconditionError(f"{key} needs a CUDA GPU (bitsandbytes); none is available here")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise PreconditionError(
            f"{key} needs the bitsandbytes package, which is not installed here"
        )
    from transformers import BitsAndBytesConfig

    if q.bits == 8:
        return BitsAndBytesConfig(
            load_in_8bit=True,
            llm_int8_threshold=q.llm_int8_threshold,
            llm_int8_has_fp16_weight=q.llm_int8_has_fp16_weight,
        )
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_compute_dtype=getattr(torch, q.bnb_4bit_compute_dtype),
        bnb_4bit_use_double_quant=q.bnb_4bit_use_double_quant,
        bnb_4bit_quant_type=q.bnb_4bit_quant_type,
    )


def load_model(
    cfg: LlmConfig,
    device: torch.device,
    *,
    packed: bool,
    total_steps: int,
    calibration: Callable[[], list[dict]] | None = None,
) -> nn.Module:
    """The base model on `device` with the job's adapter applied and checkpointing set;
    `calibration` gives the training batches a data-driven initialisation (EVA) reads."""
    from transformers import AutoModelForCausalLM

    quant = quantization_config(cfg, device)
    attn = attention.register() if packed and attention.available(device) else "sdpa"
    dtype = compute_dtype(device)
    kwargs = {"dtype": dtype, "attn_implementation": attn}
    if quant is not None:
        kwargs.update(quantization_config=quant, device_map={"": device})
    model = AutoModelForCausalLM.from_pretrained(cfg.base_model, **kwargs)
    if quant is None:
        model.to(device)
    model.config.use_cache = False
    if cfg.trainer.use_liger_kernel:
        from services.trainer.recipes.generative.kernels import apply_liger

        apply_liger(model, device)
    float8 = cfg.trainer.precision == "fp8"
    if float8:
        from services.trainer.recipes.generative import fp8

        fp8.check_available(device)
        if cfg.adapter is None:
            fp8.convert(model, device)
    if quant is not None:
        # What PEFT's prepare_model_for_kbit_training does, less its upcast of every unquantized
        # weight to fp32: that is for fp16 bases, and fp32 activations would leave flash attention.
        model.requires_grad_(False)
        if cfg.trainer.enable_gradient_checkpointing:
            model.enable_input_require_grads()
    if cfg.trainer.enable_gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
    compiling = cfg.trainer.compile and device.type == "cuda"
    if cfg.adapter is not None:
        from services.trainer.recipes.generative.lora_fused import fuse_lora

        # On a bf16 GPU the adapter stays bf16 too (torchtune's choice): fp32 adapter weights would
        # make PEFT upcast every adapted layer's input and keep fp32 copies for backward.
        model = adapters.apply(
            model,
            cfg.adapter,
            total_steps,
            autocast_adapter_dtype=dtype == torch.float32,
            calibration=calibration,
        )
        if quant is not None:
            # PEFT gives a 4-bit layer's adapter bitsandbytes' compute dtype (Ludwig's default:
            # float16), where Adam's state underflows (eps 1e-8 is 0 in fp16) and the loss went
            # NaN on the H200: the adapter trains in the job's dtype (bf16 there), as without one.
            for p in model.parameters():
                if p.requires_grad and p.dtype != dtype:
                    p.data = p.data.to(dtype)
        # Exact, and only where PEFT's forward would run the plain LoRA case. With fp8 the fused
        # layers run their base GEMMs in float8 (emulated where there is no CUDA: benches' --tiny).
        fuse_lora(model, float8, emulate=device.type != "cuda")
        if float8:
            from services.trainer.recipes.generative.lora_fused import float8_layers

            # What the fused operator does not take gets torchao's float8 (PEFT wraps it as is),
            # other than the adapters' own linears.
            fused = [m.get_base_layer() for m in float8_layers(model)]
            fp8.convert(model, device, skip=fused + fp8.adapter_modules(model))
    if float8:
        fp8.require_some(model)
    if compiling:
        # Packed batches keep static shapes, so torch's default (static first) fits.
        # reduce-overhead: each block's forward and backward replayed as CUDA graphs (graphs.py).
        mode = None if cfg.trainer.compile_mode == "default" else cfg.trainer.compile_mode
        compile_blocks(core_model(model).get_decoder(), mode=mode)
    if type(core_model(model).get_output_embeddings()) is not nn.Linear:
        raise PreconditionError(
            "the LM head must stay a plain linear layer (do not target lm_head "
            "with the adapter): the fused loss reads its weight directly"
        )
    return model


def core_model(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (LoRA layers injected in place)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if get_base is not None else model


class CausalLMWithLoss(nn.Module):
    """Decoder + fused head/cross-entropy in one forward, so DDP and FSDP2 see one root module
    (FSDP2 unshards the head weight in the root's forward, where the loss reads it)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, batch: Batch) -> LossStats:
        core = core_model(self.lm)
        kwargs = {"use_cache": False}
        kernels = contextlib.nullcontext()
        if batch.dense:  # no mask, no position ids: transformers runs causal SDPA
            kernels = attention.dense_kernels(batch.input_ids.device)
        elif batch.position_ids is not None:
            kwargs["position_ids"] = batch.position_ids
            if core.config._attn_implementation == attention.NAME:
                kwargs.update(
                    cu_seq_lens_q=batch.cu_seqlens,
                    cu_seq_lens_k=batch.cu_seqlens,
                    max_length_q=batch.max_seqlen,
                    max_length_k=batch.max_seqlen,
                    attention_mask=attention.prepared_mask(batch.input_ids.device),
                )
        else:
            kwargs["attention_mask"] = batch.attention_mask
        with kernels:
            hidden = core.get_decoder()(input_ids=batch.input_ids, **kwargs).last_hidden_state
        return linear_cross_entropy(
            hidden, core.get_output_embeddings().weight, batch.labels, batch.targets
        )


def parallelize(
    module: CausalLMWithLoss,
    strategy: str,
    device: torch.device,
    world: int,
    *,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """Single process as is; DDP replicates; FSDP2 shards each decoder layer and the root."""
    if world == 1:
        return module
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, gradient_as_bucket_view=True)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dtype = compute_dtype(device)
    # Gradients are reduced in the parameters' dtype, as DDP does: the optimizer steps bf16 weights,
    # so an fp32 reduce-scatter would double the traffic to round the same sum once more.
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=dtype)
    layers = list(core_model(module.lm).get_decoder().layers)
    for i, layer in enumerate(layers):
        # The last layer's backward starts right after its forward: resharding it is wasted work.
        last = i == len(layers) - 1
        fully_shard(layer, mp_policy=mp, reshard_after_forward=reshard_after_forward and not last)
    fully_shard(module, mp_policy=mp)
    # Explicit prefetch: all-gather the next layer while this one computes, in both directions,
    # whether or not the CPU runs ahead of the GPU.
    for prev, nxt in zip(layers, layers[1:]):
        prev.set_modules_to_forward_prefetch([nxt])
        nxt.set_modules_to_backward_prefetch([prev])
    return module
