"""Shared by the generative benchmarks: a random-weight model of a real architecture saved to disk
(speed does not depend on weight values), a one-word-one-token tokenizer over its vocabulary, and
job directories in the layout the torchrun worker reads (services/.../generative/launch.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import torch

LLAMA_1B = dict(
    hidden_size=2048,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    intermediate_size=8192,
    vocab_size=128256,
    tie_word_embeddings=True,
    max_position_embeddings=131072,
    rope_theta=500000.0,
    head_dim=64,
)
TINY = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=512,
    tie_word_embeddings=True,
    max_position_embeddings=2048,
    head_dim=16,
)


def matmul_weights(shape: dict) -> int:
    """Weights that take part in a matmul per token: every linear layer plus the LM head."""
    h, i, L = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = shape["num_key_value_heads"] * shape["head_dim"]
    q = shape["num_attention_heads"] * shape["head_dim"]
    return L * (h * q + 2 * h * kv + q * h + 3 * h * i) + shape["vocab_size"] * h


def word(i: int) -> str:
    """Token i as a letters-only word (digits get split by some pre-tokenizers)."""
    letters = ""
    while True:
        i, r = divmod(i, 26)
        letters = chr(97 + r) + letters
        if i == 0:
            return "w" + letters


def build_model_dir(out: Path, shape: dict, device: str) -> Path:
    """Random-weight Llama (bf16 on a GPU, fp32 on a CPU) + tokenizer with token i = `word(i)`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (out / "config.json").exists():
        return out
    # Special tokens are matched inside words, so none may be a substring of a word.
    special = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {
        **{s: i for i, s in enumerate(special)},
        **{word(i): i for i in range(len(special), shape["vocab_size"])},
    }
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    cfg = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
        # Explicit init: a model built under a device context can keep uninitialised memory,
        # and NaN/zero weights also run faster than real ones (wrong timings).
        with torch.no_grad():
            for name, p in model.named_parameters():  # noqa: B007
                p.normal_(0.0, 0.02) if p.dim() > 1 else p.fill_(1.0)
    if device == "cuda":
        model = model.to(torch.bfloat16)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    del model
    return out


def token_frame(n: int, lengths: tuple[int, int], vocab: int, seed: int) -> pd.DataFrame:
    """Rows whose prompt is one token and whose target fills the rest (+EOS) of a sample of
    `lengths` tokens, so nearly every position carries a label, as in the plain baseline."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        total = rng.randint(*lengths)
        words = [word(rng.randrange(4, vocab)) for _ in range(total - 1)]
        rows.append({"prompt": words[0], "target": " ".join(words[1:])})
    return pd.DataFrame(rows)


def llm_config(
    base: Path,
    *,
    adapter: dict | None,
    batch_size: int,
    packing: bool,
    steps: int,
    workers: int = 1,
    strategy: str = "ddp",
    nnodes: int = 1,
    compile: bool = False,
    max_len: int = 1024,
    accumulation: int = 1,
    liger: bool = False,
    quantization: dict | None = None,
    precision: str = "auto",
    compile_mode: str = "default",
    trainer: dict | None = None,
) -> dict:
    """A job config for the benches, pinning every trainer key the figures rely on (batch,
    accumulation, packing, optimizer, no clipping, no activation checkpointing, compile and its
    mode, kernels, precision), so a change of defaults elsewhere does not move them. `trainer`:
    more trainer keys, over these (the convergence bench's learning rate, schedule, clipping)."""
    from services.trainer.model_types import resolve
    from tunewire.config import to_dict

    raw = {
        "model_type": "llm",
        "base_model": str(base),
        "input_features": [{"name": "prompt", "type": "text"}],
        "output_features": [{"name": "target", "type": "text"}],
        "adapter": adapter,
        "quantization": quantization,
        "preprocessing": {"global_max_sequence_length": max_len, "sequence_packing": packing},
        "trainer": {
            "type": "finetune",
            "batch_size": batch_size,
            "train_steps": steps,
            "gradient_accumulation_steps": accumulation,
            "learning_rate": 1e-5,
            "steps_per_checkpoint": 100000,
            "compile": compile,
            "compile_mode": compile_mode,
            "use_liger_kernel": liger,
            "gradient_clipping": None,  # none, as the baseline (null disables)
            "optimizer": {"type": "adamw"},  # fused AdamW, the baseline's optimizer
            "enable_gradient_checkpointing": False,
            "should_shuffle": False,
            "precision": precision,
            **(trainer or {}),
        },
        "backend": {"trainer": {"strategy": strategy, "num_workers": workers, "nnodes": nnodes}},
    }
    return to_dict(resolve(raw))


def write_job(job_dir: Path, config: dict, train: pd.DataFrame, job_id: str) -> Path:
    inputs = job_dir / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    (inputs / "config.json").write_text(json.dumps(config))
    (inputs / "job.json").write_text(
        json.dumps({"job_id": job_id, "attempt": 1, "artifact_dir": str(job_dir / "artifact")})
    )
    train.to_parquet(inputs / "train.parquet", index=False)
    return job_dir
