"""Peak memory of each service, as a real process, for the largest request its configured limits
admit, against the `cpu-dev` overlay's pod limit (k8s/overlays/cpu-dev).

Each server runs with its request-size limits divided by SCALE and gets the largest request
those admit; the peak resident memory it adds (VmHWM, /proc) is scaled back up and added to the
peak it had before. The projection must stay under the pod's memory limit. What a request costs
grows with its size (texts held, chunks parsed, pieces of a table), so this is the bound at full
size; a part that does not grow (the tokenizer's prefix, the model) is counted SCALE times over.
Each server is warmed first with requests that reach what is bounded by other means (the
embedder's forward pass, by --max-batch-tokens), so what is scaled is what grows with a request.
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


def projected(proc: procs.Proc, before: int, scale: int) -> tuple[float, str]:
    """The peak at full size, and a line saying how it was reached (shown on failure)."""
    _, after = procs.memory(proc.popen.pid)
    full = before + (after - before) * scale
    return full, (
        f"{proc.name}: peak {before / MiB:.0f} MiB before, {after / MiB:.0f} MiB after a "
        f"1/{scale} request: {full / MiB:.0f} MiB at full size"
    )


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
        + ["--max-text-bytes", str(text_bytes), "--max-instruction-bytes", str(instruction_bytes)],
        tmp_path / "embedder.log",
    )
    try:
        with grpc.insecure_channel(proc.address, options=channel_options()) as channel:
            stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
            spec = embedder_pb2.EncoderSpec(model=minilm, instruction="i" * instruction_bytes)
            # Warm: full batches of texts at the model's 512 tokens, so the forward pass's own
            # peak (bounded by --max-batch-tokens, whatever the request) is in `before`.
            warm = [_words(6000, -1 - i) for i in range(64)]
            stub.Embed(embedder_pb2.EmbedRequest(encoder=spec, texts=warm), timeout=300)
            _, before = procs.memory(proc.popen.pid)
            # As many texts at the text limit as the 64 MiB message limit, scaled, holds.
            texts = [_words(text_bytes - 64, i) for i in range(64 * MiB // scale // text_bytes - 1)]
            reply = stub.Embed(embedder_pb2.EmbedRequest(encoder=spec, texts=texts), timeout=300)
            assert list(reply.embeddings.shape) == [len(texts), 384]
        full, how = projected(proc, before, scale)
        assert full < pod_limit("StatefulSet", "embedder"), how
        print(how)
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
    )
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
        _, before = procs.memory(proc.popen.pid)
        # The cache filled, then the largest table the limits admit (parsed, a CSV of these
        # texts takes ~1.2 times its bytes), admitted as a job.
        _table(tmp_path / "cached.csv", int(cache * 0.8 / 1.2), 1)
        _table(tmp_path / "big.csv", int(frame_limit * 0.9 / 1.2), 2)
        for name in ("cached.csv", "big.csv"):
            ds = client.upload_dataset(tmp_path / name)
            client.create_job(config, dataset_id=ds.id)
        client.close()
        full, how = projected(proc, before, scale)
        assert full < pod_limit("StatefulSet", "trainer"), how
        print(how)
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
    )
    try:
        with grpc.insecure_channel(proc.address, options=channel_options()) as channel:
            stub = hub_gateway_pb2_grpc.HubGatewayServiceStub(channel)
            _, before = procs.memory(proc.popen.pid)
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

            threads = [threading.Thread(target=one, args=(n,)) for n in range(uploads)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(180)
        full, how = projected(proc, before, scale)
        assert full < pod_limit("Deployment", "hub-gateway"), how
        print(how)
    finally:
        proc.stop()
