"""Peak memory of each service, as a real process, for the largest request its configured limits
admit, against the `cpu-dev` overlay's pod limit (k8s/overlays/cpu-dev).

Each server runs with its request-size limits divided by a scale and gets the largest requests
those admit. Its resident memory is sampled during each request (procs.PeakRSS; glibc told to
give freed memory back at once, so the samples follow what is held); what a request adds over
the resident memory before it is scaled back up. The projection, and the peak of the warm-up,
must stay under the pod's memory limit. What a request costs grows with its size (texts held,
chunks parsed, pieces of a table), so this bounds the full size; a part that does not grow (the
tokenizer's prefix) is counted scale times over. What other settings bound (the embedder's
forward pass, by --max-batch-tokens) is measured on a reference request of the same work and
few bytes, and counted once.
"""

from __future__ import annotations

import hashlib
import threading

import grpc
import pytest

from tests.k8s.manifests import find, quantity, rendered
from tests.reliability import procs
from tunewire.server import channel_options
from tunewire.v1 import (
    embedder_pb2,
    embedder_pb2_grpc,
    hub_gateway_pb2,
    hub_gateway_pb2_grpc,
)

pytestmark = pytest.mark.slow
MiB = 1 << 20


def pod_limit(kind: str, name: str) -> float:
    pod = find(rendered("cpu-dev"), kind, name)["spec"]["template"]["spec"]
    return quantity(pod["containers"][0]["resources"]["limits"]["memory"])


class Projection:
    """Requests measured on one process: the highest full-size projection of any of them."""

    def __init__(self, proc: procs.Proc, scale: int) -> None:
        self.proc, self.scale = proc, scale
        self.full = 0.0
        self.lines: list[str] = []

    def measure(self, reference: int = 0):
        """A `with` block around one request (a PeakRSS, recorded on exit). `reference`: what a
        request of the same work but few bytes added (what other settings bound, such as the
        embedder's forward pass), counted once rather than scaled."""
        outer = self

        class _Measured(procs.PeakRSS):
            def __enter__(self):
                self.base = procs.memory(outer.proc.popen.pid)[0]
                return super().__enter__()

            def __exit__(self, *exc) -> None:
                super().__exit__(*exc)
                self.added = self.peak - self.base
                if reference >= 0:
                    outer.record(self.base, self.added, reference)

        return _Measured(self.proc.popen.pid)

    def record(self, base: int, added: int, reference: int) -> None:
        grown = max(0, added - reference)
        full = base + reference + grown * self.scale
        self.full = max(self.full, full)
        self.lines.append(
            f"{base / MiB:.0f} MiB resident, +{reference / MiB:.0f} MiB bounded, "
            f"+{grown / MiB:.0f} MiB more in a 1/{self.scale} request: {full / MiB:.0f} MiB "
            "at full size"
        )

    def check(self, limit: float) -> None:
        _, warm_peak = procs.memory(self.proc.popen.pid)  # every peak so far, warm-up included
        how = f"{self.proc.name}: " + "; ".join(self.lines) + f" (limit {limit / MiB:.0f} MiB)"
        print(how)
        assert self.full < limit and warm_peak < limit, how


def _words(n_bytes: int, seed: int) -> str:
    words = hashlib.sha256(str(seed).encode()).hexdigest()
    text = " ".join(words[i : i + 6] for i in range(0, 60, 6))
    return (text + " ") * (n_bytes // (len(text) + 1))


def test_embedder(tmp_path, minilm):
    scale = 16
    text_bytes, instruction_bytes = MiB // scale, (8 << 10) // scale  # --max-text-bytes etc.
    proc = procs.start(
        "embedder",
        ["--data-dir", str(tmp_path), "--preload", minilm, "--device", "cpu"]
        + ["--max-text-bytes", str(text_bytes), "--max-instruction-bytes", str(instruction_bytes)]
        + ["--max-texts", str(4096 // scale)],
        tmp_path / "embedder.log",
        env=procs.TIGHT_MALLOC,
    )
    projection = Projection(proc, scale)
    try:
        with grpc.insecure_channel(proc.address, options=channel_options()) as channel:
            stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
            spec = embedder_pb2.EncoderSpec(model=minilm, instruction="i" * instruction_bytes)
            # Warm: the tokenizer's threads and first allocations.
            stub.Embed(embedder_pb2.EmbedRequest(encoder=spec, texts=["warm", "up"]), timeout=60)
            # As many texts at the text limit as the 64 MiB message limit, scaled, holds; then
            # as many texts as --max-texts allows, each as long as still fits the message (at
            # 32 tokens: what grows there is per text, and 512 tokens each is minutes of CPU).
            short = embedder_pb2.EncoderSpec(
                model=minilm, instruction=spec.instruction, max_length=32
            )
            shapes = [(64 * MiB // scale // text_bytes - 1, spec), (4096 // scale, short)]
            for count, encoder in shapes:
                # The reference: as many texts, each just long enough to fill max_length tokens,
                # so the same forward passes, and few bytes.
                tokens = encoder.max_length or 512
                few = [_words(8 * tokens + 200, -(count * 10**6 + i)) for i in range(count)]
                with projection.measure(reference=-1) as ref:
                    stub.Embed(embedder_pb2.EmbedRequest(encoder=encoder, texts=few), timeout=300)
                size = min(text_bytes, 64 * MiB // scale // count) - 64
                texts = [_words(size, count * 10**6 + i) for i in range(count)]
                request = embedder_pb2.EmbedRequest(encoder=encoder, texts=texts)
                with projection.measure(reference=ref.added):
                    reply = stub.Embed(request, timeout=300)
                assert list(reply.embeddings.shape) == [count, 384]
        projection.check(pod_limit("StatefulSet", "embedder"))
    finally:
        proc.stop()


def _table(path, n_bytes: int, seed: int) -> None:
    """A CSV of about `n_bytes` of unique texts and a label."""
    with open(path, "w") as fh:
        fh.write("text,label\n")
        row = 0
        while fh.tell() < n_bytes:
            fh.write(f"{_words(90, seed * 10**7 + row).strip()} {row},{row % 2}\n")
            row += 1


def test_trainer(tmp_path):
    from clients.sdk import TrainerClient
    from services.trainer.datasets import DEFAULT_MAX_FRAME_BYTES
    from services.trainer.frame_cache import DEFAULT_MAX_BYTES as DEFAULT_CACHE_BYTES

    scale = 16
    frame_limit, cache = DEFAULT_MAX_FRAME_BYTES // scale, DEFAULT_CACHE_BYTES // scale
    proc = procs.start(
        "trainer",
        ["--data-dir", str(tmp_path / "trn"), "--max-dataset-bytes", str(2048 * MiB // scale)]
        + ["--max-dataset-memory-bytes", str(frame_limit), "--dataset-cache-bytes", str(cache)],
        tmp_path / "trainer.log",
        env=procs.TIGHT_MALLOC,
    )
    projection = Projection(proc, scale)
    config = {
        "input_features": [
            {"name": "text", "type": "text", "encoder": {"pretrained_model_name_or_path": "m"}}
        ],
        "output_features": [{"name": "label", "type": "binary"}],
    }
    try:
        client = TrainerClient(proc.address)
        _table(tmp_path / "small.csv", 10_000, 0)
        # Warm: a job admitted and run (it fails: no embedder), so every module is loaded.
        warm = client.upload_dataset(tmp_path / "small.csv")
        client.wait(client.create_job(config, dataset_id=warm.id).id)
        # The cache filled, then the largest table the limits admit (parsed, a CSV of these
        # texts takes ~1.2 times its bytes), each uploaded and admitted as a job that then runs.
        _table(tmp_path / "cached.csv", int(cache * 0.8 / 1.2), 1)
        _table(tmp_path / "big.csv", int(frame_limit * 0.9 / 1.2), 2)
        with projection.measure():
            for name in ("cached.csv", "big.csv"):
                ds = client.upload_dataset(tmp_path / name)
                client.wait(client.create_job(config, dataset_id=ds.id).id)
        client.close()
        projection.check(pod_limit("StatefulSet", "trainer"))
    finally:
        proc.stop()


def test_hub_gateway(tmp_path):
    scale = 16
    message = 4 * MiB // scale  # the gateway's --max-message-bytes, scaled
    uploads = 8  # --max-receiving-uploads: all of them at once
    proc = procs.start(
        "hub_gateway",
        ["--data-dir", str(tmp_path / "gw"), "--endpoint", "http://127.0.0.1:9"]
        + ["--max-message-bytes", str(message), "--max-receiving-uploads", str(uploads)],
        tmp_path / "gateway.log",
        env=procs.TIGHT_MALLOC,
    )
    projection = Projection(proc, scale)
    try:
        with grpc.insecure_channel(proc.address, options=channel_options()) as channel:
            stub = hub_gateway_pb2_grpc.HubGatewayServiceStub(channel)
            data = b"\x01" * (message - 4096)  # one chunk as large as a message may be
            size = 24  # chunks a file

            def one(n: int) -> None:
                def requests():
                    yield hub_gateway_pb2.CreateUploadRequest(
                        spec=hub_gateway_pb2.UploadSpec(repo_id=f"org/m{n}", request_id=str(n))
                    )
                    digest = hashlib.sha256(data * size).hexdigest()
                    for i in range(size):
                        yield hub_gateway_pb2.CreateUploadRequest(
                            file=hub_gateway_pb2.UploadFileChunk(
                                path="model.safetensors",
                                data=data,
                                last=i == size - 1,
                                sha256=digest if i == size - 1 else "",
                            )
                        )

                try:  # not a valid artifact: refused once received, which is what is measured
                    stub.CreateUpload(requests(), timeout=120)
                except grpc.RpcError as exc:
                    assert exc.code() != grpc.StatusCode.INTERNAL, exc.details()

            one(99)  # warm
            threads = [threading.Thread(target=one, args=(n,)) for n in range(uploads)]
            with projection.measure():
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(180)
        projection.check(pod_limit("Deployment", "hub-gateway"))
    finally:
        proc.stop()
