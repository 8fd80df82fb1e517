"""Named kinds of bad input, each with the status it must get: malformed CSV and JSONL, wrong
encodings, NaN/inf labels, 1 MB texts, empty strings, duplicate ids and columns, and path
traversal in every path-like field (data set ids, model paths, artifact paths, upload paths)."""

from __future__ import annotations

import grpc
import pytest

from tests.reliability.conftest import code_of, text_input
from tunewire.errors import from_rpc_error
from tunewire.server import channel_options
from tunewire.v1 import (
    embedder_pb2,
    embedder_pb2_grpc,
    hub_gateway_pb2,
    hub_gateway_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)

OK, INVALID = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT
DENIED, NOT_FOUND = grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND


@pytest.fixture(scope="module")
def stubs(tmp_path_factory, minilm):
    from services.embedder.app import Settings as EmbedderSettings
    from services.embedder.app import start as start_embedder
    from services.hub_gateway.app import Settings as GatewaySettings
    from services.hub_gateway.app import start as start_gateway
    from services.trainer.app import Settings as TrainerSettings
    from services.trainer.app import start as start_trainer

    root = tmp_path_factory.mktemp("bad")
    embedder = start_embedder(EmbedderSettings(port=0, data_dir=root / "emb", preload=[minilm]))
    trainer = start_trainer(
        TrainerSettings(data_dir=root / "trn", port=0, embedder=f"127.0.0.1:{embedder.port}")
    )
    trainer.core.runner.stop(timeout=2)  # jobs are created, never run
    (root / "roots" / "model").mkdir(parents=True)
    gateway = start_gateway(
        GatewaySettings(
            data_dir=root / "gw",
            port=0,
            artifact_roots=[root / "roots"],
            endpoint="http://127.0.0.1:9",
            token="hf_x",
        )
    )
    chans = [
        grpc.insecure_channel(f"127.0.0.1:{app.port}", options=channel_options())
        for app in (embedder, trainer, gateway)
    ]
    yield {
        "embedder": embedder_pb2_grpc.EmbedderServiceStub(chans[0]),
        "trainer": trainer_pb2_grpc.TrainerServiceStub(chans[1]),
        "gateway": hub_gateway_pb2_grpc.HubGatewayServiceStub(chans[2]),
        "root": root,
        "minilm": minilm,
        "embedder_address": f"127.0.0.1:{embedder.port}",
    }
    for c in chans:
        c.close()
    gateway.close(None)
    trainer.running.stop(None)
    trainer.close()
    embedder.stop(None)


def upload(stub, data: bytes, filename: str):
    return stub.UploadDataset(
        iter(
            [
                trainer_pb2.UploadDatasetRequest(
                    metadata=trainer_pb2.UploadDatasetRequest.Metadata(filename=filename)
                ),
                trainer_pb2.UploadDatasetRequest(chunk=data),
            ]
        )
    )


@pytest.mark.parametrize(
    "name,data,filename",
    [
        ("unclosed quote", b'text,label\n"never closed,1\nx,0\n', "d.csv"),
        ("ragged rows", b"text,label\na,1\nb,0,extra,more\n", "d.csv"),
        ("duplicate columns", b"text,text,label\na,b,1\n", "d.csv"),
        ("truncated jsonl", b'{"text": "a", "label": 1}\n{"text": \n', "d.jsonl"),
        ("jsonl of non-objects", b"[1, 2]\n3\n", "d.jsonl"),
        ("latin-1 bytes", "text,label\ncafé,1\n".encode("latin-1"), "d.csv"),
        ("utf-16", "text,label\nhello,1\n".encode("utf-16"), "d.csv"),
        ("not parquet", b"PAR1 but not really", "d.parquet"),
        ("empty file", b"", "d.csv"),
        ("header only", b"text,label\n", "d.csv"),
        ("unknown extension", b"text,label\na,1\n", "d.xlsx"),
    ],
)
def test_malformed_data_sets_are_invalid_argument(stubs, name, data, filename):
    with pytest.raises(grpc.RpcError) as info:
        upload(stubs["trainer"], data, filename)
    assert info.value.code() == INVALID, f"{name}: {info.value.details()}"
    assert from_rpc_error(info.value).field in ("dataset", "metadata.format")


def create(stubs, csv: bytes, output: dict, request_id: str = "") -> grpc.StatusCode:
    import json

    ds = upload(stubs["trainer"], csv, "labels.csv")
    config = {"input_features": [text_input(stubs["minilm"])], "output_features": [output]}
    return code_of(
        lambda: stubs["trainer"].CreateJob(
            trainer_pb2.CreateJobRequest(
                config_json=json.dumps(config), dataset_id=ds.id, request_id=request_id
            )
        )
    )


@pytest.mark.parametrize("label", ["nan", "inf", "-inf", "1e999"])
def test_non_finite_number_labels_are_invalid_argument(stubs, label):
    csv = f"text,y\na,1.5\nb,{label}\nc,2\nd,3\n".encode()
    assert create(stubs, csv, {"name": "y", "type": "number"}) == INVALID


def test_json_nan_in_a_config_is_invalid_argument(stubs):
    ds = upload(stubs["trainer"], b"text,y\na,1\nb,0\n", "nan.csv")
    config = (
        '{"input_features": [{"name": "text", "type": "text"}], "output_features": '
        '[{"name": "y", "type": "binary"}], "trainer": {"learning_rate": NaN}}'
    )
    assert (
        code_of(
            lambda: stubs["trainer"].CreateJob(
                trainer_pb2.CreateJobRequest(config_json=config, dataset_id=ds.id)
            )
        )
        == INVALID
    )


def _config(model: str, decoder: dict | None = None, **sections) -> str:
    import json

    output = {"name": "y", "type": "binary", **({"decoder": decoder} if decoder else {})}
    return json.dumps(
        {"input_features": [text_input(model)], "output_features": [output], **sections}
    )


@pytest.mark.parametrize(
    "config,field",
    [
        (lambda m: "[" * 100_000, "config_json"),  # was INTERNAL (RecursionError)
        (lambda m: '{"trainer": {"epochs": ' + "1" * 5000 + "}}", "config_json"),  # INTERNAL
        (lambda m: "[" * 65 + "]" * 65, "config_json"),
        (lambda m: _config(m, trainer={"epochs": 1e12}), "trainer.epochs"),
        (
            lambda m: _config(m, {"fc_output_size": 1e11}),  # was INTERNAL (RuntimeError)
            "output_features[0].decoder.fc_output_size",
        ),
        (
            lambda m: _config(m, combiner={"fc_layers": [{"output_size": 10**6}]}),
            "combiner.fc_layers[0].output_size",
        ),  # any fc_layers was INTERNAL (IndexError)
    ],
)
def test_hostile_configs_are_invalid_argument_with_the_field(stubs, config, field):
    ds = upload(stubs["trainer"], b"text,y\na,1\nb,0\n", "hostile.csv")
    with pytest.raises(grpc.RpcError) as info:
        stubs["trainer"].CreateJob(
            trainer_pb2.CreateJobRequest(config_json=config(stubs["minilm"]), dataset_id=ds.id),
            timeout=30,
        )
    assert info.value.code() == INVALID, info.value.details()
    assert from_rpc_error(info.value).field == field


def test_megabyte_texts_and_empty_strings(stubs):
    big = "long " * 200_000  # 1 MB of text in one cell
    ds = upload(stubs["trainer"], f"text,label\n{big},1\n,0\nshort,1\n".encode(), "big.csv")
    assert ds.rows == 3
    spec = embedder_pb2.EncoderSpec(model=stubs["minilm"], max_length=16)
    resp = stubs["embedder"].Embed(
        embedder_pb2.EmbedRequest(encoder=spec, texts=["", big[:999_000]])
    )
    assert list(resp.embeddings.shape) == [2, 384]
    for bad in (
        embedder_pb2.EmbedRequest(encoder=spec),  # no texts
        embedder_pb2.EmbedRequest(encoder=embedder_pb2.EncoderSpec(model=""), texts=["a"]),
        embedder_pb2.EmbedRequest(encoder=embedder_pb2.EncoderSpec(model="  "), texts=["a"]),
    ):
        code = code_of(lambda: stubs["embedder"].Embed(bad))
        assert code in (OK, INVALID)
        if not bad.encoder.model.strip():
            assert code == INVALID
    assert code_of(lambda: upload(stubs["trainer"], b"text,label\na,1\n", "")) == INVALID
    assert code_of(lambda: stubs["trainer"].CreateJob(trainer_pb2.CreateJobRequest())) == INVALID


def test_a_text_cell_over_the_limit_is_refused_at_create_with_its_row(stubs):
    """Such a cell failed the job part way (the embedder refuses texts over 1 MiB)."""
    import json

    huge = "é" * (1 << 19) + "x"  # 1 MiB + 1 byte of UTF-8, in half as many characters
    ds = upload(stubs["trainer"], f"text,label\nfine,1\n{huge},0\n".encode(), "huge.csv")
    config = {
        "input_features": [text_input(stubs["minilm"])],
        "output_features": [{"name": "label", "type": "binary"}],
    }
    with pytest.raises(grpc.RpcError) as info:
        stubs["trainer"].CreateJob(
            trainer_pb2.CreateJobRequest(config_json=json.dumps(config), dataset_id=ds.id)
        )
    err = from_rpc_error(info.value)
    assert info.value.code() == INVALID and err.field == "input_features[0].column"
    assert "row 1 of column 'text'" in err.message and str((1 << 20) + 1) in err.message


def test_duplicate_ids_are_idempotent(stubs):
    first = upload(stubs["trainer"], b"text,label\nsame,1\nbytes,0\n", "a.csv")
    again = upload(stubs["trainer"], b"text,label\nsame,1\nbytes,0\n", "b.csv")
    assert first.id == again.id
    import json

    config = json.dumps(
        {
            "input_features": [text_input(stubs["minilm"])],
            "output_features": [{"name": "label", "type": "binary"}],
        }
    )
    request = trainer_pb2.CreateJobRequest(
        config_json=config, dataset_id=first.id, request_id="dup-1"
    )
    assert stubs["trainer"].CreateJob(request).id == stubs["trainer"].CreateJob(request).id


TRAVERSALS = [
    "../../../etc/passwd",
    "/etc/passwd",
    "..",
    "a/../../b",
    "ds-../../x",
    "\x00x",
    "x" * 5000,
]


@pytest.mark.parametrize("value", TRAVERSALS)
def test_path_traversal_in_every_path_like_field(stubs, value):
    trainer, gateway, embedder = stubs["trainer"], stubs["gateway"], stubs["embedder"]
    # Data set ids: malformed (INVALID_ARGUMENT) or unknown (NOT_FOUND), never a file read.
    assert code_of(lambda: trainer.GetDataset(trainer_pb2.GetDatasetRequest(id=value))) in (
        INVALID,
        NOT_FOUND,
    )
    # Model paths for Predict: outside the artifact roots is PERMISSION_DENIED.
    code = code_of(
        lambda: trainer.Predict(trainer_pb2.PredictRequest(model=value, dataset_id="ds-x"))
    )
    assert code in (DENIED, INVALID, NOT_FOUND)
    if value in ("/etc/passwd", "../../../etc/passwd", ".."):
        assert code == DENIED
    # Job ids of artifact downloads.
    assert code_of(
        lambda: list(trainer.DownloadArtifact(trainer_pb2.DownloadArtifactRequest(job_id=value)))
    ) in (INVALID, NOT_FOUND)
    # Encoder model paths: not a model directory, or not a Hub id.
    spec = embedder_pb2.EncoderSpec(model=value)
    assert code_of(
        lambda: embedder.Embed(embedder_pb2.EmbedRequest(encoder=spec, texts=["a"]))
    ) in (INVALID, NOT_FOUND)
    # The gateway's artifact_path: only under its roots.
    spec = hub_gateway_pb2.UploadSpec(repo_id="org/repo", artifact_path=value, dry_run=True)
    code = code_of(
        lambda: gateway.CreateUpload(iter([hub_gateway_pb2.CreateUploadRequest(spec=spec)]))
    )
    assert code in (DENIED, INVALID, NOT_FOUND)
    # File paths inside a streamed upload: relative and inside the artifact, or refused.
    spec = hub_gateway_pb2.UploadSpec(repo_id="org/repo", dry_run=True)
    chunk = hub_gateway_pb2.UploadFileChunk(path=value, data=b"{}", last=True)
    assert (
        code_of(
            lambda: gateway.CreateUpload(
                iter(
                    [
                        hub_gateway_pb2.CreateUploadRequest(spec=spec),
                        hub_gateway_pb2.CreateUploadRequest(file=chunk),
                    ]
                )
            )
        )
        == INVALID
    )
    assert not (stubs["root"] / "etc").exists() and not (stubs["root"].parent / "b").exists()


def test_a_request_that_does_not_parse_is_invalid_argument(stubs):
    """Bytes that are not UTF-8 in a string field: protobuf cannot parse the message, which
    grpc.aio answered UNKNOWN ("Unexpected <class DecodeError>"); unary and client-streamed."""
    channel = grpc.insecure_channel(stubs["embedder_address"], options=channel_options())
    request = embedder_pb2.PredictRowsRequest(model="job-000000000000")
    request.columns.add(name="text").values.append("PLACEHOLDER")
    bad = request.SerializeToString().replace(b"PLACEHOLDER", b"\xff\xfe\xfd" * 4 + b"\xfc")
    predict = channel.unary_unary("/tunewire.v1.EmbedderService/PredictRows")
    streamed = channel.stream_stream("/tunewire.v1.EmbedderService/StreamEmbed")
    embed = embedder_pb2.EmbedRequest(texts=["PLACEHOLDER"])
    embed.encoder.model = stubs["minilm"]
    bad_embed = embed.SerializeToString().replace(b"PLACEHOLDER", b"\xff\xfe\xfd" * 4 + b"\xfc")
    try:
        for call in (lambda: predict(bad), lambda: list(streamed(iter([bad_embed])))):
            with pytest.raises(grpc.RpcError) as info:
                call()
            err = from_rpc_error(info.value)
            assert err.code == INVALID, err
            assert err.field == "request" and "does not parse" in err.message
    finally:
        channel.close()
