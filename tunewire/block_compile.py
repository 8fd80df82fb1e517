"""torch.compile per transformer block, shared by the generative trainer and the embedder.

Each block (decoder or encoder layer) is compiled on its own rather than the whole model
(torchtitan's choice): all blocks run the same code, so one compiled graph serves every block and
compile time is one block's, while what lies between blocks (embeddings, rotary tables, masks,
hidden-state collection, pooling) stays eager, where transformers' Python does not fight the
tracer. Inductor fuses a block's norms, rotary embedding, activation product and residual adds,
which eager PyTorch runs as separate memory-bound kernels between the GEMMs.
"""

from __future__ import annotations

from torch import nn


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's repeated blocks: the first module list as long as `config.num_hidden_layers`
    (LlamaModel.layers, BertModel.encoder.layer, ...)."""
    n = int(model.config.num_hidden_layers)
    for module in model.modules():
        if (
            isinstance(module, nn.ModuleList)
            and len(module) == n
            and len({type(block) for block in module}) == 1
        ):
            return module
    raise ValueError(f"{type(model).__name__} has no list of {n} identical blocks to compile")


def compile_blocks(
    model: nn.Module,
    *,
    dynamic: bool | None = None,
    eager_rounding: bool = False,
    mode: str | None = None,
) -> nn.ModuleList:
    """Compile every block of `model` in place (`nn.Module.compile`); returns the blocks.

    `dynamic=True` traces sizes symbolically from the first call, so inputs whose token count
    changes every call (packed batches) reuse one graph instead of recompiling; None is
    torch's default (static first, dynamic after a size changes), right for fixed-size rows.

    `eager_rounding=True` keeps every bf16/fp16 rounding that eager PyTorch does between fused
    operators (inductor's `emulate_precision_casts`). Without it inductor keeps fused
    intermediates in fp32, which is closer to exact arithmetic but drifts away from the eager
    model's own bf16 outputs over many layers: the embedder wants the eager vectors.

    `mode` is torch.compile's (None: its default); "reduce-overhead" replays each block's
    kernels as a CUDA graph, one launch a block instead of one a kernel."""
    blocks = transformer_blocks(model)
    options = {"emulate_precision_casts": True} if eager_rounding else None
    for block in blocks:
        if mode is None:
            block.compile(dynamic=dynamic, options=options)
        else:  # torch.compile takes a mode or options, not both
            if options:
                raise ValueError("compile_blocks: eager_rounding does not combine with a mode")
            block.compile(dynamic=dynamic, mode=mode)
    return blocks


def uncompile_blocks(blocks: nn.ModuleList) -> None:
    """Undo `compile_blocks` (the blocks run eagerly again). `nn.Module.compile` keeps the
    compiled callable in `_compiled_call_impl`; torch has no public inverse."""
    for block in blocks:
        block._compiled_call_impl = None
