"""Model roots: a server loads local encoders from under its roots only, and its answer to a
path outside them is the same whether or not that path exists (tunewire/model_roots.py)."""

from pathlib import Path

import grpc
import pytest

from services.embedder.app import Settings, start
from tunewire.errors import from_rpc_error
from tunewire.server import channel_options
from tunewire.v1 import embedder_pb2, embedder_pb2_grpc


@pytest.fixture(scope="module")
def stub(tmp_path_factory, minilm_path):
    app = start(
        Settings(
            port=0,
            data_dir=tmp_path_factory.mktemp("data"),
            device="cpu",
            model_roots=[Path(minilm_path).parent],
            hub_models=False,
        )
    )
    with grpc.insecure_channel(f"127.0.0.1:{app.port}", options=channel_options()) as channel:
        yield embedder_pb2_grpc.EmbedderServiceStub(channel)
    app.stop()


def _info(stub, model: str):
    request = embedder_pb2.GetEncoderInfoRequest(encoder=embedder_pb2.EncoderSpec(model=model))
    return stub.GetEncoderInfo(request, timeout=60)


def _refusal(stub, model: str):
    with pytest.raises(grpc.RpcError) as exc:
        _info(stub, model)
    return exc.value.code(), from_rpc_error(exc.value)


def test_a_model_under_the_roots_loads(stub, minilm_path):
    assert _info(stub, minilm_path).dimension == 384


def test_paths_outside_the_roots_are_refused_alike_whether_they_exist_or_not(
    stub, minilm_path, tmp_path
):
    (tmp_path / "config.json").write_text("{}")  # a model directory by the old rule
    answers = [
        _refusal(stub, path)
        for path in ["/etc", str(tmp_path), "/no/such/dir", f"{minilm_path}/../../../../etc"]
    ]
    for code, err in answers:
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert (err.reason, err.field) == ("OUTSIDE_MODEL_ROOTS", "encoder.model")
        assert "exist" not in err.message and "config.json" not in err.message


def test_under_the_roots_a_missing_model_is_not_found(stub, minilm_path):
    code, err = _refusal(stub, str(Path(minilm_path).parent / "no-such-model"))
    assert code == grpc.StatusCode.NOT_FOUND and err.field == "encoder.model"


def test_hub_ids_can_be_turned_off(stub):
    code, err = _refusal(stub, "sentence-transformers/all-MiniLM-L6-v2")
    assert code == grpc.StatusCode.PERMISSION_DENIED and err.reason == "HUB_MODELS_OFF"


def test_the_server_entrypoint_always_has_roots(tmp_path):
    from services.embedder.__main__ import build_parser, settings_from_args

    settings = settings_from_args(
        build_parser().parse_args(["--data-dir", str(tmp_path), "--model-root", "/models"])
    )
    assert settings.model_roots[:2] == [tmp_path / "models", Path("/models")]
