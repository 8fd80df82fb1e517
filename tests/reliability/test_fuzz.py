"""Property-based fuzz of every RPC of the three services, and of job configs: bad input never
crashes a server and never comes back INTERNAL (or UNKNOWN); the servers stay SERVING."""

from __future__ import annotations

import copy
import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability import fuzz
from tunewire.server import channel_options
from tunewire.v1 import (
    embedder_pb2,
    embedder_pb2_grpc,
    hub_gateway_pb2,
    hub_gateway_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)

EXAMPLES = 30
BAD = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.DATA_LOSS,
}
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, minilm):
    """Embedder, trainer (its job runner stopped: queued jobs never run) and hub_gateway
    in-process on loopback, plus ids that exist so fuzzed calls reach past the lookups."""
    from services.embedder.app import Settings as EmbedderSettings
    from services.embedder.app import start as start_embedder
    from services.hub_gateway.app import Settings as GatewaySettings
    from services.hub_gateway.app import start as start_gateway
    from services.trainer.app import Settings as TrainerSettings
    from services.trainer.app import start as start_trainer
    from tests.hubserver import TestHub

    root = tmp_path_factory.mktemp("fuzz")
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")  # a fuzzed model name must never reach for the network
    hub = TestHub(root / "hub")
    embedder = start_embedder(
        EmbedderSettings(port=0, data_dir=root / "emb", max_texts=16, preload=[minilm])
    )
    trainer = start_trainer(
        TrainerSettings(data_dir=root / "trn", port=0, embedder=f"127.0.0.1:{embedder.port}")
    )
    trainer.core.runner.stop(timeout=2)
    artifacts = root / "artifact-root"
    (artifacts / "model").mkdir(parents=True)
    (artifacts / "model" / "config.json").write_text("{}")
    gateway = start_gateway(
        GatewaySettings(
            data_dir=root / "gw",
            port=0,
            trainer_address=f"127.0.0.1:{trainer.port}",
            artifact_roots=[artifacts],
            endpoint=hub.endpoint,
            token="hf_fuzz",
        )
    )
    ds = trainer.core.datasets.put(
        [b"text,label,score\nhello,yes,0.5\nbye,no,1.5\ngood,yes,2\nbad,no,3\n"], "seed.csv"
    )
    job = trainer.core.runner.submit(base_config(minilm), dataset_id=ds.id)
    channels = {
        name: grpc.insecure_channel(f"127.0.0.1:{app.port}", options=channel_options())
        for name, app in (("embedder", embedder), ("trainer", trainer), ("gateway", gateway))
    }
    known = [
        ds.id,
        job.id,
        minilm,
        str(artifacts),
        str(artifacts / "model"),
        "model",
        "org/repo",
        hub.endpoint,
    ]
    yield {
        "channels": channels,
        "known": known,
        "dataset": ds.id,
        "minilm": minilm,
        "trainer": trainer,
    }
    for channel in channels.values():
        channel.close()
    gateway.close(None)
    trainer.running.stop(None)
    trainer.close()
    embedder.stop(None)
    hub.close()
    mp.undo()


def base_config(model: str) -> dict:
    return {
        "input_features": [
            {
                "name": "text",
                "type": "text",
                "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": model},
            }
        ],
        "output_features": [{"name": "label", "type": "binary"}],
        "trainer": {"epochs": 1},
    }


def call(stub_method, request, kind: str):
    """Make the call; returns the status code (OK when it succeeded)."""
    try:
        if kind == "unary":
            stub_method(request, timeout=20)
        elif kind == "stream_in":
            stub_method(iter(request), timeout=20)
        elif kind == "stream_out":
            for _ in stub_method(request, timeout=3):
                pass
        else:
            for _ in stub_method(iter(request), timeout=20):
                pass
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


# (service stub, pb module, method, request class, kind)
RPCS = [
    (
        embedder_pb2_grpc.EmbedderServiceStub,
        "embedder",
        "Embed",
        embedder_pb2.EmbedRequest,
        "unary",
    ),
    (
        embedder_pb2_grpc.EmbedderServiceStub,
        "embedder",
        "StreamEmbed",
        embedder_pb2.EmbedRequest,
        "bidi",
    ),
    (
        embedder_pb2_grpc.EmbedderServiceStub,
        "embedder",
        "GetEncoderInfo",
        embedder_pb2.GetEncoderInfoRequest,
        "unary",
    ),
    (
        embedder_pb2_grpc.EmbedderServiceStub,
        "embedder",
        "GetCacheStats",
        embedder_pb2.GetCacheStatsRequest,
        "unary",
    ),
    (
        embedder_pb2_grpc.EmbedderServiceStub,
        "embedder",
        "PredictRows",
        embedder_pb2.PredictRowsRequest,
        "unary",
    ),
    (
        trainer_pb2_grpc.TrainerServiceStub,
        "trainer",
        "UploadDataset",
        trainer_pb2.UploadDatasetRequest,
        "stream_in",
    ),
    (
        trainer_pb2_grpc.TrainerServiceStub,
        "trainer",
        "GetDataset",
        trainer_pb2.GetDatasetRequest,
        "unary",
    ),
    (
        trainer_pb2_grpc.TrainerServiceStub,
        "trainer",
        "CreateJob",
        trainer_pb2.CreateJobRequest,
        "unary",
    ),
    (trainer_pb2_grpc.TrainerServiceStub, "trainer", "GetJob", trainer_pb2.GetJobRequest, "unary"),
    (
        trainer_pb2_grpc.TrainerServiceStub,
        "trainer",
        "DeleteDataset",
        trainer_pb2.DeleteDatasetRequest,
        "unary",
    ),
    (
        trainer_pb2_grpc.TrainerServiceStub,
        "trainer",
        "ListJobs",
        trainer_pb2.ListJobsRequest,
        "unary",
    ),
    (
        trainer_pb2_grpc.TrainerServiceStub,
        "trainer",
        "CancelJob",
        trainer_pb2.CancelJobRequest,
        "unary",
    ),
    (
        trainer_pb2_grpc.TrainerServiceStub,
        "trainer",
        "WatchJob",
        trainer_pb2.WatchJobRequest,
        "stream_out",
    ),
    (
        trainer_pb2_grpc.TrainerServiceStub,
        "trainer",
        "Predict",
        trainer_pb2.PredictRequest,
        "unary",
    ),
    (
        trainer_pb2_grpc.TrainerServiceStub,
        "trainer",
        "DownloadArtifact",
        trainer_pb2.DownloadArtifactRequest,
        "stream_out",
    ),
    (
        hub_gateway_pb2_grpc.HubGatewayServiceStub,
        "gateway",
        "CreateUpload",
        hub_gateway_pb2.CreateUploadRequest,
        "stream_in",
    ),
    (
        hub_gateway_pb2_grpc.HubGatewayServiceStub,
        "gateway",
        "GetUpload",
        hub_gateway_pb2.GetUploadRequest,
        "unary",
    ),
    (
        hub_gateway_pb2_grpc.HubGatewayServiceStub,
        "gateway",
        "WatchUpload",
        hub_gateway_pb2.WatchUploadRequest,
        "stream_out",
    ),
]


def test_the_fuzz_covers_every_rpc():
    covered = {f"{cls.__name__.removesuffix('Stub')}/{m}" for cls, _, m, _, _ in RPCS}
    for module in (embedder_pb2, trainer_pb2, hub_gateway_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                assert f"{service.name}/{method.name}" in covered


def assert_serving(stack) -> None:
    for name, channel in stack["channels"].items():
        status = (
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(), timeout=5)
            .status
        )
        assert status == health_pb2.HealthCheckResponse.SERVING, name


@pytest.mark.parametrize("stub_cls,server,method,request_cls,kind", RPCS, ids=[r[2] for r in RPCS])
def test_fuzzed_requests_get_a_meaningful_status(
    stack, stub_cls, server, method, request_cls, kind
):
    stub_method = getattr(stub_cls(stack["channels"][server]), method)
    single = fuzz.requests(request_cls, stack["known"])
    strategy = single if kind in ("unary", "stream_out") else st.lists(single, max_size=4)
    seen: dict[grpc.StatusCode, int] = {}

    @FUZZ
    @given(strategy)
    def run(request):
        code = call(stub_method, request, kind)
        seen[code] = seen.get(code, 0) + 1
        allowed_timeout = kind == "stream_out" and code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert code not in BAD and (code != grpc.StatusCode.DEADLINE_EXCEEDED or allowed_timeout), (
            f"{method}: {code} for {request!r}"[:2000]
        )

    run()
    assert_serving(stack)
    # A message without fields has one value only; hypothesis tries it once.
    assert sum(seen.values()) >= (EXAMPLES // 2 if request_cls.DESCRIPTOR.fields else 1)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.floats()
    | st.integers(-(10**6), 10**6)
    | st.sampled_from(fuzz.TRAVERSALS + fuzz.ODD[:12]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def mutated_configs(draw, model: str) -> dict:
    """A valid config with a few of its keys replaced, dropped or joined by unknown ones."""
    cfg = base_config(model)
    cfg["preprocessing"] = {"split": {"type": "random", "probabilities": [0.5, 0.25, 0.25]}}
    for _ in range(draw(st.integers(1, 3))):
        node = cfg
        while isinstance(node, (dict, list)) and node and draw(st.booleans()):
            key = draw(
                st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node)))
            )
            if not isinstance(node[key], (dict, list)) or not node[key]:
                break
            node = node[key]
        if isinstance(node, dict):
            key = draw(st.sampled_from(sorted(node) + ["unknown_key", "type", "name", "epochs"]))
            if draw(st.booleans()) and key in node:
                del node[key]
            else:
                node[key] = draw(JSON)
        elif isinstance(node, list) and node:
            node[draw(st.integers(0, len(node) - 1))] = draw(JSON)
    return cfg


def test_fuzzed_configs_are_invalid_argument_or_accepted(stack):
    stub = trainer_pb2_grpc.TrainerServiceStub(stack["channels"]["trainer"])
    seen: dict[grpc.StatusCode, int] = {}

    @settings(
        max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(mutated_configs(stack["minilm"]))
    def run(cfg):
        text = json.dumps(copy.deepcopy(cfg), allow_nan=True)
        code = call(
            stub.CreateJob,
            trainer_pb2.CreateJobRequest(config_json=text, dataset_id=stack["dataset"]),
            "unary",
        )
        seen[code] = seen.get(code, 0) + 1
        assert code in (
            grpc.StatusCode.OK,
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.FAILED_PRECONDITION,
        ), f"{code} for {text}"

    run()
    assert seen.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 10
    assert_serving(stack)
