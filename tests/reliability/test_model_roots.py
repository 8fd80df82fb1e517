"""Model roots, the same rule in every service (tunewire/model_roots.py): a job's base model or
adapted encoder outside the trainer's roots is refused at CreateJob (an llm `base_model: /etc`
was read by the model loader when the job ran and failed with a raw multi-line error), and a
frozen encoder outside the embedder's roots is refused by the embedder, named on the feature."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from tests.reliability.conftest import text_input
from tunewire.errors import from_rpc_error
from tunewire.server import channel_options
from tunewire.v1 import trainer_pb2, trainer_pb2_grpc

DENIED = grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture(scope="module")
def stub(tmp_path_factory, minilm):
    from services.embedder.app import Settings as EmbedderSettings
    from services.embedder.app import start as start_embedder
    from services.trainer.app import Settings as TrainerSettings
    from services.trainer.app import start as start_trainer

    root = tmp_path_factory.mktemp("roots")
    embedder = start_embedder(
        EmbedderSettings(port=0, data_dir=root / "emb", model_roots=[root / "emb-models"])
    )
    trainer = start_trainer(
        TrainerSettings(data_dir=root / "trn", port=0, embedder=f"127.0.0.1:{embedder.port}")
    )
    trainer.core.runner.stop(timeout=2)  # jobs are admitted, never run
    channel = grpc.insecure_channel(f"127.0.0.1:{trainer.port}", options=channel_options())
    yield trainer_pb2_grpc.TrainerServiceStub(channel), root
    channel.close()
    trainer.running.stop(None)
    trainer.close()
    embedder.stop(None)


def _refusal(stub, config: dict, csv: bytes):
    ds = stub.UploadDataset(
        iter(
            [
                trainer_pb2.UploadDatasetRequest(
                    metadata=trainer_pb2.UploadDatasetRequest.Metadata(filename="d.csv")
                ),
                trainer_pb2.UploadDatasetRequest(chunk=csv),
            ]
        )
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateJob(
            trainer_pb2.CreateJobRequest(config_json=json.dumps(config), dataset_id=ds.id),
            timeout=60,
        )
    return info.value.code(), from_rpc_error(info.value)


@pytest.mark.parametrize("base_model", ["/etc", "/no/such/model", "../../../../etc"])
def test_an_llm_base_model_outside_the_roots_is_refused_at_create(stub, base_model):
    config = {
        "model_type": "llm",
        "base_model": base_model,
        "input_features": [{"name": "prompt", "type": "text"}],
        "output_features": [{"name": "answer", "type": "text"}],
    }
    code, err = _refusal(stub[0], config, b"prompt,answer\nhi,there\n")
    assert code == DENIED and (err.field, err.reason) == ("base_model", "OUTSIDE_MODEL_ROOTS")
    assert "\n" not in err.message and "exist" not in err.message


def test_a_frozen_encoder_outside_the_embedders_roots_is_named_on_the_feature(stub, minilm):
    config = {
        "input_features": [text_input(minilm)],
        "output_features": [{"name": "label", "type": "binary"}],
    }
    code, err = _refusal(stub[0], config, b"text,label\na,1\nb,0\n")
    assert code == DENIED and err.reason == "OUTSIDE_MODEL_ROOTS"
    assert err.field == "input_features[0].encoder.pretrained_model_name_or_path"


def test_an_adapted_encoder_is_checked_against_the_trainers_roots(stub, minilm):
    assert not Path(minilm).is_relative_to(stub[1])
    config = {
        "input_features": [text_input(minilm, trainable=True, adapter={"type": "lora"})],
        "output_features": [{"name": "label", "type": "binary"}],
    }
    code, err = _refusal(stub[0], config, b"text,label\na,1\nb,0\n")
    assert code == DENIED and err.reason == "OUTSIDE_MODEL_ROOTS"
    assert err.field == "input_features[0].encoder.pretrained_model_name_or_path"
