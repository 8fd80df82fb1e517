"""spec.job_id: the gateway fetches the artifact from the trainer's DownloadArtifact stream.

The trainer here serves only DownloadArtifact, from a directory per job id, with the contract's
FileChunk shape (path, data, last, sha256), so the gateway's side of that contract is exercised
over real gRPC without training a model.
"""

from __future__ import annotations

import hashlib

import pytest

from clients.hub import upload_to_hf_hub
from tests.hub_gateway.conftest import start_gateway
from tunewire.errors import FailedPrecondition, NotFound, Unavailable
from tunewire.server import ServerSettings, Service, create_server
from tunewire.v1 import hub_gateway_pb2 as pb
from tunewire.v1 import trainer_pb2, trainer_pb2_grpc


class ArtifactTrainer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, artifacts: dict, corrupt: bool = False) -> None:
        self.artifacts = artifacts
        self.corrupt = corrupt

    def DownloadArtifact(self, request, context):
        root = self.artifacts.get(request.job_id)
        if root is None:
            raise NotFound(f"no job {request.job_id!r}", field="job_id")
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            data = path.read_bytes()
            rel = path.relative_to(root).as_posix()
            half = len(data) // 2
            yield trainer_pb2.FileChunk(path=rel, data=data[:half])
            sha = hashlib.sha256(data).hexdigest() if not self.corrupt else "0" * 64
            yield trainer_pb2.FileChunk(path=rel, data=data[half:], last=True, sha256=sha)


@pytest.fixture
def trainer(adapter_model):
    servicer = ArtifactTrainer({"job-1": adapter_model})
    running = create_server(
        [
            Service(
                "tunewire.v1.TrainerService",
                servicer,
                trainer_pb2_grpc.add_TrainerServiceServicer_to_server,
            )
        ],
        ServerSettings(port=0),
    )
    yield servicer, f"127.0.0.1:{running.port}"
    running.stop(None)


@pytest.fixture
def job_gateway(tmp_path, hub, trainer):
    app = start_gateway(tmp_path, hub, data_dir=tmp_path / "gwjob", trainer_address=trainer[1])
    yield f"127.0.0.1:{app.port}"
    app.close(grace=1.0)


def test_upload_of_a_trainer_job(hub, job_gateway, adapter_model):
    upload = upload_to_hf_hub("org/from-job", None, job_id="job-1", gateway=job_gateway)
    assert upload.state == pb.Upload.SUCCEEDED and upload.artifact_kind == "peft_adapter"
    files = hub.files_at("org/from-job")
    assert files["adapter_model.safetensors"]["lfs"]
    sent = hashlib.sha256((adapter_model / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert files["adapter_model.safetensors"]["sha256"] == sent


def test_unknown_job_and_corrupt_stream(hub, job_gateway, trainer):
    with pytest.raises(NotFound):
        upload_to_hf_hub("org/x", None, job_id="job-404", gateway=job_gateway)
    trainer[0].corrupt = True
    with pytest.raises(Unavailable, match="sha256 mismatch"):
        upload_to_hf_hub("org/x", None, job_id="job-1", gateway=job_gateway)
    assert hub.count("repos_created") == 0


def test_gateway_without_trainer_refuses_job_ids(gateway_address):
    with pytest.raises(FailedPrecondition) as info:
        upload_to_hf_hub("org/x", None, job_id="job-1", gateway=gateway_address)
    assert info.value.field == "spec.job_id"
