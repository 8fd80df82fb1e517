"""One user's work is theirs: a trainer and an embedder with principals, over real gRPC.

Alice trains a real (tiny) job through the trainer, which reaches the embedder with its `service`
token acting for her. Bob, another `train` principal, then tries everything the issue lists:
none of it finds her work (NOT_FOUND, as for an id that does not exist), and his request ids are
his own. `admin` sees all; a read token reads only its own principal's artifacts.
"""

from __future__ import annotations

import time

import grpc
import pytest

from services.embedder.app import Settings as EmbedderSettings
from services.embedder.app import start as start_embedder
from services.trainer.app import Settings as TrainerSettings
from services.trainer.app import start as start_trainer
from tests.e2e.conftest import text_config
from tunewire.errors import from_rpc_error
from tunewire.server import ServerSecurity, channel_options
from tunewire.tls import ClientSecurity
from tunewire.v1 import trainer_pb2 as pb
from tunewire.v1 import trainer_pb2_grpc

TOKENS = {
    "alice": "tok-alice-6a1f",
    "alice-ci": "tok-alice-ro-0c3d",  # a read-only token of the principal alice
    "bob": "tok-bob-28e4",
    "admin": "tok-admin-f19b",
    "trainer": "tok-trainer-5d72",
}
TOKENS_FILE = (
    f"{TOKENS['alice']} train alice alice,alice-lab\n"
    f"{TOKENS['alice-ci']} read alice alice,alice-lab\n"
    f"{TOKENS['bob']} train bob\n"
    f"{TOKENS['admin']} admin root *\n"
    f"{TOKENS['trainer']} service trainer\n"
)
CSV = ("text,label\n" + "".join(f"row {i} of alice's data,{i % 2}\n" for i in range(24))).encode()
TERMINAL = (pb.Job.SUCCEEDED, pb.Job.FAILED, pb.Job.CANCELLED)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, minilm):
    root = tmp_path_factory.mktemp("owners")
    tokens = root / "tokens"
    tokens.write_text(TOKENS_FILE)
    security = ServerSecurity(auth_tokens_file=tokens)
    mp = pytest.MonkeyPatch()
    mp.setenv("TUNEWIRE_TOKEN", TOKENS["trainer"])  # the trainer's own token to its peers
    mp.delenv("TUNEWIRE_TOKEN_FILE", raising=False)
    embedder = start_embedder(
        EmbedderSettings(port=0, data_dir=root / "emb", preload=[minilm], security=security)
    )
    trainer = start_trainer(
        TrainerSettings(
            data_dir=root / "trn",
            port=0,
            embedder=f"127.0.0.1:{embedder.port}",
            security=security,
        )
    )
    channels: list[grpc.Channel] = []

    def stub(who: str) -> trainer_pb2_grpc.TrainerServiceStub:
        channel = ClientSecurity(token=TOKENS[who]).channel(
            f"127.0.0.1:{trainer.port}", channel_options()
        )
        channels.append(channel)
        return trainer_pb2_grpc.TrainerServiceStub(channel)

    yield stub, trainer
    for channel in channels:
        channel.close()
    trainer.running.stop(None).wait()
    trainer.close()
    embedder.stop()
    mp.undo()


def upload(stub, data: bytes, name: str = "d.csv") -> pb.Dataset:
    meta = pb.UploadDatasetRequest.Metadata(filename=name)
    return stub.UploadDataset(
        iter([pb.UploadDatasetRequest(metadata=meta), pb.UploadDatasetRequest(chunk=data)])
    )


def config_json(minilm: str, epochs: int = 1) -> str:
    import json

    return json.dumps(text_config(minilm, {"name": "label", "type": "binary"}, epochs=epochs))


def wait(stub, job_id: str, timeout: float = 120) -> pb.Job:
    deadline = time.monotonic() + timeout
    while (job := stub.GetJob(pb.GetJobRequest(id=job_id))).state not in TERMINAL:
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    return job


def refused(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if not isinstance(result, pb.Job | pb.Dataset | pb.ListJobsResponse | pb.PredictResponse):
            list(result)  # a stream: read it
    err = from_rpc_error(info.value)
    return err.code, err.message


@pytest.fixture(scope="module")
def alices_job(cluster, minilm):
    stub, _ = cluster
    alice = stub("alice")
    ds = upload(alice, CSV)
    job = alice.CreateJob(pb.CreateJobRequest(config_json=config_json(minilm), dataset_id=ds.id))
    done = wait(alice, job.id)
    assert done.state == pb.Job.SUCCEEDED, done.error  # through the embedder, acting for alice
    return ds, done


def test_bob_cannot_reach_alices_job_or_data(cluster, alices_job, minilm):
    stub, app = cluster
    ds, job = alices_job
    bob = stub("bob")
    missing = "job-000000000000"
    not_found = refused(lambda: bob.GetJob(pb.GetJobRequest(id=missing)))
    assert not_found[0] == grpc.StatusCode.NOT_FOUND

    def same_as_missing(call) -> None:
        code, message = refused(call)
        assert code == grpc.StatusCode.NOT_FOUND, (code, message)
        assert job.id not in message or message.replace(job.id, missing) == not_found[1]

    same_as_missing(lambda: bob.GetJob(pb.GetJobRequest(id=job.id)))
    same_as_missing(lambda: bob.WatchJob(pb.WatchJobRequest(id=job.id)))
    same_as_missing(lambda: bob.CancelJob(pb.CancelJobRequest(id=job.id)))
    same_as_missing(lambda: bob.DownloadArtifact(pb.DownloadArtifactRequest(job_id=job.id)))
    same_as_missing(lambda: bob.Predict(pb.PredictRequest(model=job.id, dataset_id=ds.id)))
    # Her artifact by its path under the trainer's artifacts root is hers too.
    path = job.artifact_path
    assert refused(lambda: bob.Predict(pb.PredictRequest(model=path, dataset_id=ds.id)))[0] == (
        grpc.StatusCode.NOT_FOUND
    )
    assert job.id not in [j.id for j in bob.ListJobs(pb.ListJobsRequest()).jobs]
    # Her data set: not readable, not trainable, not usable for prediction with his own model.
    assert refused(lambda: bob.GetDataset(pb.GetDatasetRequest(id=ds.id)))[0] == (
        grpc.StatusCode.NOT_FOUND
    )
    for field in ("dataset_id", "training_set_id"):
        request = pb.CreateJobRequest(config_json=config_json(minilm), **{field: ds.id})
        assert refused(lambda r=request: bob.CreateJob(r))[0] == grpc.StatusCode.NOT_FOUND
    # Alice still has it all; admin sees all.
    alice, admin = stub("alice"), stub("admin")
    assert alice.GetJob(pb.GetJobRequest(id=job.id)).state == pb.Job.SUCCEEDED
    assert [e.sequence for e in alice.WatchJob(pb.WatchJobRequest(id=job.id))]
    assert job.id in [j.id for j in alice.ListJobs(pb.ListJobsRequest()).jobs]
    assert admin.GetJob(pb.GetJobRequest(id=job.id)).owner == "alice"  # admin sees whose
    assert job.id in [j.id for j in admin.ListJobs(pb.ListJobsRequest()).jobs]
    assert admin.GetDataset(pb.GetDatasetRequest(id=ds.id)).owner == "alice"


def test_a_read_token_downloads_only_its_principals_artifacts(cluster, alices_job, minilm):
    stub, _ = cluster
    _, job = alices_job
    reader = stub("alice-ci")  # role read, principal alice
    files = list(reader.DownloadArtifact(pb.DownloadArtifactRequest(job_id=job.id)))
    assert any(f.path == "tunewire.json" for f in files)
    bob = stub("bob")
    ds = upload(bob, CSV)
    his = wait(
        bob,
        bob.CreateJob(pb.CreateJobRequest(config_json=config_json(minilm), dataset_id=ds.id)).id,
    )
    assert his.state == pb.Job.SUCCEEDED
    # His own model does not read her data set either.
    her_ds, _ = alices_job
    request = pb.PredictRequest(model=his.id, dataset_id=her_ds.id)
    assert refused(lambda: bob.Predict(request))[0] == grpc.StatusCode.NOT_FOUND
    assert bob.Predict(pb.PredictRequest(model=his.id, dataset_id=ds.id)).rows == 24
    code, _ = refused(lambda: reader.DownloadArtifact(pb.DownloadArtifactRequest(job_id=his.id)))
    assert code == grpc.StatusCode.NOT_FOUND


def test_data_set_ids_include_their_owner(cluster):
    stub, _ = cluster
    alice, bob = stub("alice"), stub("bob")
    first = upload(alice, CSV, "same.csv")
    assert upload(alice, CSV, "same.csv").id == first.id  # a retried upload
    theirs = upload(bob, CSV, "same.csv")
    assert theirs.id != first.id and theirs.sha256 == first.sha256


def test_request_ids_are_per_principal_and_bound_to_the_request(cluster, minilm):
    stub, _ = cluster
    alice, bob = stub("alice"), stub("bob")
    his_ds = upload(bob, CSV)
    request = pb.CreateJobRequest(
        config_json=config_json(minilm), dataset_id=his_ds.id, request_id="nightly-1"
    )
    his = bob.CreateJob(request)
    assert bob.CreateJob(request).id == his.id  # a retry
    changed = pb.CreateJobRequest(
        config_json=config_json(minilm, epochs=2), dataset_id=his_ds.id, request_id="nightly-1"
    )
    err_code, _ = refused(lambda: bob.CreateJob(changed))
    assert err_code == grpc.StatusCode.ALREADY_EXISTS
    # Alice's request with the id bob used is her own job, not his.
    her_ds = upload(alice, CSV)
    hers = alice.CreateJob(
        pb.CreateJobRequest(
            config_json=config_json(minilm), dataset_id=her_ds.id, request_id="nightly-1"
        )
    )
    assert hers.id != his.id and hers.dataset_id == her_ds.id
    for who, job in ((bob, his), (alice, hers)):
        wait(who, job.id)


def test_upload_to_is_checked_against_the_owners_namespaces(cluster, minilm):
    stub, _ = cluster
    alice = stub("alice")
    ds = upload(alice, CSV)
    request = pb.CreateJobRequest(
        config_json=config_json(minilm), dataset_id=ds.id, upload_to="bob/stolen-name"
    )
    with pytest.raises(grpc.RpcError) as info:
        alice.CreateJob(request)
    err = from_rpc_error(info.value)
    assert err.code == grpc.StatusCode.PERMISSION_DENIED and err.field == "upload_to"
    assert err.reason == "NAMESPACE_NOT_ALLOWED"
    assert not [j for j in alice.ListJobs(pb.ListJobsRequest()).jobs if j.upload_to]


def test_bob_cannot_train_on_alices_artifact_by_its_path(cluster, alices_job, minilm):
    """A job whose base model or adapted encoder is her artifact would hand him her weights:
    NOT_FOUND at CreateJob, by the field's path; her own job may start from it."""
    import json

    stub, _ = cluster
    _, job = alices_job
    bob, alice = stub("bob"), stub("alice")
    ds = upload(bob, CSV)
    llm = {
        "model_type": "llm",
        "base_model": job.artifact_path,
        "input_features": [{"name": "text", "type": "text"}],
        "output_features": [{"name": "label", "type": "text"}],
    }
    adapted = text_config(job.artifact_path, {"name": "label", "type": "binary"}, epochs=1)
    adapted["input_features"][0]["encoder"] |= {"trainable": True, "adapter": {"type": "lora"}}
    adapted["input_features"][0]["preprocessing"]["cache_encoder_embeddings"] = False
    for cfg, field in ((llm, "base_model"), (adapted, "input_features[0].encoder")):
        request = pb.CreateJobRequest(config_json=json.dumps(cfg), dataset_id=ds.id)
        with pytest.raises(grpc.RpcError) as info:
            bob.CreateJob(request)
        err = from_rpc_error(info.value)
        assert err.code == grpc.StatusCode.NOT_FOUND, err
        assert err.field.startswith(field) and job.id in err.message
    assert job.id not in [j.id for j in bob.ListJobs(pb.ListJobsRequest()).jobs]
    # Her own path passes the check: the next one (the models come before the data sets) is
    # what refuses her request, which names a data set that does not exist.
    hers = pb.CreateJobRequest(config_json=json.dumps(llm), dataset_id="ds-0000")
    with pytest.raises(grpc.RpcError) as info:
        alice.CreateJob(hers)
    assert from_rpc_error(info.value).field == "dataset_id"
