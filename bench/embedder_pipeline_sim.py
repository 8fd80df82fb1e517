"""Where the embedder's gRPC path leaves a GPU idle: StreamEmbed on a CPU with a simulated device.

A diagnostic, not a throughput figure. The real server (gRPC, StreamEmbed's window, the batch
queue, tokenising, the LMDB cache, response encoding) runs in this process with a tiny Llama, but
the encoder's `launch` is replaced by a simulated GPU: the launch does the real host work of a
packed launch (`varlen.pack`) plus `--launch-ops` small torch calls (each releases and retakes the
GIL, as a compiled model's kernel launches do), then queues the batch on a device thread that
"computes" it for tokens / `--device-tokens-per-s` seconds (a sleep, holding no GIL) and in order,
as a CUDA stream does. What the device did is recorded: its busy time against the stream's wall
time says how long it waited for the host, and the timeline says where.

The simulated vectors are a function of each text's token ids (length, sum, first and last id),
so the answers are checked against the texts' own tokenisation: order kept, nothing lost.

    PYTHONPATH=$PWD .venv/bin/python bench/embedder_pipeline_sim.py \\
        --tokenizer-from .whl/g21g/minilm --n-texts 2048 --device-tokens-per-s 150000
"""

from __future__ import annotations

import argparse
import gc
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.embedder_throughput import random_model, synthetic_texts  # noqa: E402
from bench.host_trace import HostTrace  # noqa: E402


def fake_vectors(input_ids: list[list[int]], dim: int) -> torch.Tensor:
    """What the simulated device returns for a batch: per text [len, sum, first, last, 0...]
    (exact in float32 for MiniLM's ids and texts of up to 512 tokens)."""
    out = torch.zeros((len(input_ids), dim), dtype=torch.float32)
    for i, row in enumerate(input_ids):
        out[i, :4] = torch.tensor([len(row), sum(row), row[0], row[-1]], dtype=torch.float32)
    return out


class SimulatedDevice:
    """A device that runs queued batches one after another, tokens / rate seconds each."""

    def __init__(self, tokens_per_s: float, launch_ops: int, dim: int) -> None:
        self.rate = tokens_per_s
        self.launch_ops = launch_ops
        self.dim = dim
        self.busy: list[tuple[float, float, int, float]] = []  # (start, end, tokens, launched)
        self.launch_seconds: list[float] = []  # each launch's host time
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, daemon=True, name="sim-device").start()

    def launch(self, input_ids, *, pooling, layer, normalize, packed=None):
        from services.embedder import varlen
        from services.embedder.encoder import Launched

        begun = time.perf_counter()
        varlen.pack(input_ids, pin=False)  # the host work of a packed launch
        x = torch.zeros(1)
        for _ in range(self.launch_ops):  # kernel launches: each a GIL release and retake
            x = x + 1
        vectors = fake_vectors(input_ids, self.dim)
        done = _Event()
        self.launch_seconds.append(time.perf_counter() - begun)
        self._queue.put((sum(len(r) for r in input_ids), done, begun))
        return Launched(vectors, done)

    def _run(self) -> None:
        while True:
            tokens, done, launched = self._queue.get()
            start = time.perf_counter()
            time.sleep(tokens / self.rate)
            self.busy.append((start, time.perf_counter(), tokens, launched))
            done.set()


class _Event(threading.Event):
    """A CUDA event's face (`synchronize`) on a threading.Event."""

    def synchronize(self) -> None:
        self.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer-from", required=True)
    parser.add_argument("--n-texts", type=int, default=2048)
    parser.add_argument("--request-size", type=int, default=512)
    parser.add_argument("--max-batch-tokens", type=int, default=65536)
    parser.add_argument("--device-tokens-per-s", type=float, default=150_000)
    parser.add_argument("--launch-ops", type=int, default=600)
    parser.add_argument("--timeline", action="store_true", help="print every batch")
    parser.add_argument(
        "--as-before",
        action="store_true",
        help="the pipeline as before 2026-12-03 (the launching thread waits for its batch, "
        "packed batches sorted by length, scraps of batches launched early)",
    )
    parser.add_argument(
        "--no-ramp",
        action="store_true",
        help="the launcher as before its ramp (half a budget behind a batch on the device, "
        "64-text chunks from a request's first, tokenizer copies made on first use)",
    )
    args = parser.parse_args(argv)

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    from services.embedder.app import Settings, start
    from tunewire.server import channel_options
    from tunewire.tensors import from_proto
    from tunewire.v1 import embedder_pb2, embedder_pb2_grpc

    with tempfile.TemporaryDirectory() as work:
        model = str(random_model(Path(work) / "llama", "llama", True, "cpu", args.tokenizer_from))
        texts = synthetic_texts(Path(model), args.n_texts, 0)
        app = start(
            Settings(
                port=0,
                data_dir=Path(work) / "data",
                preload=[model],
                device="cpu",
                max_batch_tokens=args.max_batch_tokens,
                compile=False,
            )
        )
        encoder = app.service.registry.entries()[0].encoder
        expected = fake_vectors(encoder.tokenize(texts, 512), encoder.dimension).numpy()
        device = SimulatedDevice(args.device_tokens_per_s, args.launch_ops, encoder.dimension)
        encoder.launch = device.launch
        encoder.passes = None  # the GPU path of the service (launch slots, not CPU passes)
        encoder.launches = threading.BoundedSemaphore(2)
        app.service.landers = not args.as_before
        app.service.registry.entries()[0].queue.arrival_order = not args.as_before
        if args.no_ramp or args.as_before:
            app.service.ramp = False
            encoder.tokenizing.ramp = False
        else:
            encoder.tokenizing.ramp = True  # as on a GPU
            encoder.tokenizing.warm()  # as a GPU encoder's load does, and then:
            gc.collect()
            gc.freeze()
        try:
            with grpc.insecure_channel(f"127.0.0.1:{app.port}", options=channel_options()) as ch:
                stub = embedder_pb2_grpc.EmbedderServiceStub(ch)
                spec = embedder_pb2.EncoderSpec(model=model, max_length=512)
                stub.Embed(embedder_pb2.EmbedRequest(encoder=spec, texts=["warm up"]))
                device.busy.clear()
                device.launch_seconds.clear()
                answers: list[tuple[float, int]] = []
                got = []
                start_t = time.perf_counter()
                requests = (
                    embedder_pb2.EmbedRequest(encoder=spec, texts=texts[i : i + args.request_size])
                    for i in range(0, len(texts), args.request_size)
                )
                with HostTrace().installed() as host:
                    host.start = start_t
                    for response in stub.StreamEmbed(requests, timeout=3600):
                        got.append(from_proto(response.embeddings))
                        answers.append((time.perf_counter() - start_t, len(got[-1])))
                    wall = time.perf_counter() - start_t
        finally:
            app.stop()
    vectors = np.concatenate(got)
    assert np.array_equal(vectors, expected), "answers differ from the texts' own vectors"
    busy = sum(end - start for start, end, _, _ in device.busy)
    tokens = sum(t for _, _, t, _ in device.busy)
    first = device.busy[0][0] - start_t
    last = wall - (device.busy[-1][1] - start_t)
    gaps = [b[0] - a[1] for a, b in zip(device.busy, device.busy[1:])]
    print(
        f"{len(texts)} texts, {tokens} tokens, {len(device.busy)} batches "
        f"(mean {tokens / len(device.busy):,.0f} tokens); wall {wall:.3f} s, device busy "
        f"{busy:.3f} s ({busy / wall:.1%}); before the first batch {first * 1e3:.0f} ms, "
        f"after the last {last * 1e3:.0f} ms, gaps between batches {sum(gaps) * 1e3:.0f} ms "
        f"(largest {max(gaps, default=0) * 1e3:.0f} ms); launches' host time median "
        f"{np.median(device.launch_seconds) * 1e3:.0f} ms, largest "
        f"{max(device.launch_seconds) * 1e3:.0f} ms; vectors in order: yes"
        + (" (pipeline as before)" if args.as_before else "")
        + (" (no ramp)" if args.no_ramp else "")
    )
    if args.timeline:
        print(host.summary(wall))
        for start, end, t, launched in device.busy:
            print(
                f"  launched {(launched - start_t) * 1e3:7.0f}  ran {(start - start_t) * 1e3:7.0f}"
                f"-{(end - start_t) * 1e3:7.0f} ms  {t:6d} tokens"
            )
        for at, n in answers:
            print(f"  answer of {n} rows at {at * 1e3:7.0f} ms")


if __name__ == "__main__":
    main()
