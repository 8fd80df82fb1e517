"""The gateway over real gRPC on loopback, uploading to the test Hub on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from huggingface_hub import snapshot_download
from structlog.testing import capture_logs

from clients.hub import HubGatewayClient, upload_to_hf_hub
from tests.hub_gateway.conftest import TOKEN
from tunewire.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from tunewire.v1 import hub_gateway_pb2 as pb

LOAD_AND_GENERATE = textwrap.dedent("""
    import sys, torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from peft import PeftModel
    full, adapter = sys.argv[1], sys.argv[2]
    tok = AutoTokenizer.from_pretrained(full)
    model = AutoModelForCausalLM.from_pretrained(full)
    ids = tok("the quick brown fox", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4, out.shape
    base = AutoModelForCausalLM.from_pretrained(full)
    tuned = PeftModel.from_pretrained(base, adapter)
    assert any("lora_A" in n for n, _ in tuned.named_parameters())
    inputs = AutoTokenizer.from_pretrained(adapter)("a tiny llama", return_tensors="pt")
    out = tuned.generate(**inputs, max_new_tokens=3, do_sample=False)
    print("GENERATED", out.shape[1])
""")


def test_health_is_serving(gateway_address):
    with grpc.insecure_channel(gateway_address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service="tunewire.v1.HubGatewayService"))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_round_trip_full_model_and_adapter_load_with_stock_code(
    hub, gateway_address, full_model, adapter_model, tmp_path
):
    full = upload_to_hf_hub("org/tiny-llama", full_model, private=True, gateway=gateway_address)
    adapter = upload_to_hf_hub(
        "org/tiny-lora", adapter_model, gateway=gateway_address, commit_message="LoRA on tiny llama"
    )
    assert full.state == pb.Upload.SUCCEEDED and adapter.state == pb.Upload.SUCCEEDED
    assert full.artifact_kind == "full_model" and adapter.artifact_kind == "peft_adapter"
    # private honoured; one commit per upload on top of the repo's initial one.
    assert hub.repo("org/tiny-llama")["private"] is True
    assert hub.repo("org/tiny-lora")["private"] is False
    assert len(hub.commits_on("org/tiny-llama")) == 2 and len(hub.commits_on("org/tiny-lora")) == 2
    assert hub.count("commits") == 2
    assert full.commit_oid == hub.commits_on("org/tiny-llama")[0]
    lfs = {f.path for f in full.files if f.lfs}
    assert (
        lfs == {"model.safetensors"} and hub.files_at("org/tiny-llama")["model.safetensors"]["lfs"]
    )
    # the card: generated for the full model, PEFT's empty template replaced for the adapter.
    assert "AutoModelForCausalLM.from_pretrained('org/tiny-llama')" in full.model_card
    assert (
        "library_name: peft" in adapter.model_card
        and "More Information Needed" not in adapter.model_card
    )

    cache = tmp_path / "hf-cache"
    full_dir = snapshot_download(
        "org/tiny-llama", endpoint=hub.endpoint, token=TOKEN, cache_dir=cache
    )
    adapter_dir = snapshot_download(
        "org/tiny-lora", endpoint=hub.endpoint, token=TOKEN, cache_dir=cache
    )
    assert (full_model / "model.safetensors").read_bytes() == open(
        os.path.join(full_dir, "model.safetensors"), "rb"
    ).read()
    with pytest.raises(Exception):  # private: nothing without the token  # noqa: B017
        snapshot_download(
            "org/tiny-llama", endpoint=hub.endpoint, token=False, cache_dir=tmp_path / "anon"
        )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_AND_GENERATE, full_dir, adapter_dir],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GENERATED" in proc.stdout


def test_large_file_goes_through_lfs_and_a_dropped_put_is_retried(hub, gateway_address, full_model):
    big = os.urandom(10 * 1024 * 1024 + 123)  # above the Hub's 10 MB threshold for any file
    (full_model / "extra.dat").write_bytes(big)
    hub.fail("PUT", r"^/lfs-upload/", None, times=1)  # drop the connection mid-body
    upload = upload_to_hf_hub("org/big", full_model, gateway=gateway_address)
    assert upload.state == pb.Upload.SUCCEEDED
    assert {f.path for f in upload.files if f.lfs} == {"extra.dat", "model.safetensors"}
    assert hub.count("lfs_put_attempts") == 3 and hub.count("lfs_puts") == 2
    assert hub.count("commits") == 1
    files = hub.files_at("org/big")
    assert files["extra.dat"]["lfs"] and files["extra.dat"]["size"] == len(big)
    assert hub.store.read_object(files["extra.dat"]["sha256"]) == big


def test_server_errors_are_retried_into_exactly_one_commit(hub, gateway_address, full_model):
    hub.fail("POST", r"/commit/", 500, times=2)
    upload = upload_to_hf_hub("org/flaky", full_model, gateway=gateway_address)
    assert upload.state == pb.Upload.SUCCEEDED
    assert hub.count("POST /api/models/org/flaky/commit/main") == 3
    assert hub.count("commits") == 1 and len(hub.commits_on("org/flaky")) == 2


def test_rate_limit_honours_retry_after(hub, gateway_address, adapter_model):
    hub.fail("POST", r"/commit/", 429, times=1, headers={"Retry-After": "2"})
    started = time.monotonic()
    upload = upload_to_hf_hub("org/limited", adapter_model, gateway=gateway_address)
    assert time.monotonic() - started >= 2.0
    assert upload.state == pb.Upload.SUCCEEDED and hub.count("commits") == 1


def test_rejected_token_is_unauthenticated_commits_nothing_and_never_leaks(
    hub, tmp_path, full_model
):
    from services.hub_gateway.app import Settings, start

    wrong = "hf_WRONG_secret_value_77"
    token_file = tmp_path / "token"
    token_file.write_text(wrong + "\n")
    with capture_logs() as logs:
        app = start(
            Settings(
                data_dir=tmp_path / "gw401", port=0, endpoint=hub.endpoint, token_file=token_file
            )
        )
        try:
            with pytest.raises(Unauthenticated) as info:
                upload_to_hf_hub("org/denied", full_model, gateway=f"127.0.0.1:{app.port}")
            client = HubGatewayClient(f"127.0.0.1:{app.port}")
            upload = client.get(info.value.metadata["upload_id"])
            events = list(client.watch(upload.id))
            client.close()
        finally:
            app.close(grace=1.0)
    assert upload.state == pb.Upload.FAILED and upload.error_reason == "HUB_UNAUTHENTICATED"
    assert hub.count("commits") == 0 and hub.repo("org/denied") is None
    assert wrong not in str(info.value) and wrong not in str(upload) and wrong not in str(events)
    assert wrong not in repr(logs) and TOKEN not in repr(logs)
    stored = "".join(
        p.read_text(errors="ignore") for p in (tmp_path / "gw401").rglob("*") if p.is_file()
    )
    assert wrong not in stored


def test_unchanged_artifact_is_not_sent_again(hub, gateway_address, full_model):
    first = upload_to_hf_hub("org/again", full_model, gateway=gateway_address)
    puts, commits = hub.count("lfs_puts"), hub.count("commits")
    assert puts == 1 and commits == 1
    second = upload_to_hf_hub("org/again", full_model, gateway=gateway_address)
    assert hub.count("lfs_puts") == puts and hub.count("commits") == commits
    assert all(f.skipped for f in second.files) and second.bytes_sent == 0
    assert second.commit_oid == first.commit_oid
    # one changed small file: one new commit, still no large file sent
    cfg = json.loads((full_model / "generation_config.json").read_text())
    (full_model / "generation_config.json").write_text(json.dumps({**cfg, "max_length": 7}))
    third = upload_to_hf_hub("org/again", full_model, gateway=gateway_address)
    assert hub.count("lfs_puts") == puts and hub.count("commits") == commits + 1
    assert [f.path for f in third.files if not f.skipped] == ["generation_config.json"]


def test_invalid_artifact_fails_before_anything_is_sent(hub, gateway_address, full_model):
    (full_model / "model.safetensors").unlink()
    (full_model / "tokenizer.json").unlink()
    with pytest.raises(InvalidArgument) as info:
        upload_to_hf_hub("org/broken", full_model, gateway=gateway_address)
    assert "model.safetensors" in str(info.value) and "tokenizer.json" in str(info.value)
    assert info.value.field == "model_path"
    assert hub.count("repos_created") == 0


def test_artifact_roots(hub, gateway_address, artifact_root, full_model, tmp_path):
    client = HubGatewayClient(gateway_address)
    try:
        with pytest.raises(PermissionDenied) as info:
            client.create_upload(pb.UploadSpec(repo_id="org/x", artifact_path=str(full_model)))
        assert info.value.field == "spec.artifact_path"
        with pytest.raises(PermissionDenied):
            client.create_upload(
                pb.UploadSpec(
                    repo_id="org/x", artifact_path=str(artifact_root / ".." / full_model.name)
                )
            )
        inside = artifact_root / "run1"
        full_model.rename(inside)
        upload = client.create_upload(pb.UploadSpec(repo_id="org/x", artifact_path=str(inside)))
        done = client.wait(upload.id)
        assert done.state == pb.Upload.SUCCEEDED and hub.count("commits") == 1
        with pytest.raises(PermissionDenied) as info:
            client.create_upload(
                pb.UploadSpec(
                    repo_id="org/x", artifact_path=str(inside), endpoint="http://elsewhere.example"
                )
            )
        assert info.value.field == "spec.endpoint"
    finally:
        client.close()


def test_idempotent_create_watch_replay_and_restart(hub, tmp_path, adapter_model):
    from services.hub_gateway.app import Settings, start

    settings = Settings(data_dir=tmp_path / "gw", port=0, endpoint=hub.endpoint, token=TOKEN)
    app = start(settings)
    client = HubGatewayClient(f"127.0.0.1:{app.port}")
    try:
        spec = pb.UploadSpec(repo_id="org/idem", request_id="req-1")
        first = client.create_upload(spec, adapter_model)
        again = client.create_upload(spec, adapter_model)
        assert again.id == first.id
        done = client.wait(first.id)
        assert done.state == pb.Upload.SUCCEEDED and hub.count("commits") == 1
        events = list(client.watch(first.id))
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert events[0].state == pb.Upload.PENDING and events[-1].state == pb.Upload.SUCCEEDED
        assert events[-1].bytes_sent == events[-1].bytes_total == done.bytes_total
        tail = list(client.watch(first.id, from_sequence=len(events)))
        assert [e.sequence for e in tail] == [len(events)]
        with pytest.raises(NotFound):
            client.get("up-missing")
    finally:
        client.close()
        app.close(grace=1.0)
    app = start(settings)  # records are durable
    client = HubGatewayClient(f"127.0.0.1:{app.port}")
    try:
        assert client.get(first.id).commit_oid == done.commit_oid
        assert client.create_upload(spec, adapter_model).id == first.id
        assert hub.count("commits") == 1
    finally:
        client.close()
        app.close(grace=1.0)


def test_revision_missing_is_not_found(hub, gateway_address, adapter_model):
    with pytest.raises(NotFound) as info:
        upload_to_hf_hub("org/rev", adapter_model, gateway=gateway_address, revision="no-branch")
    assert info.value.reason == "HUB_REVISION_NOT_FOUND"
    assert hub.count("commits") == 0


def test_create_pr_leaves_main_untouched(hub, gateway_address, adapter_model):
    upload_to_hf_hub("org/pr", adapter_model, gateway=gateway_address)
    (adapter_model / "adapter_config.json").write_text(
        (adapter_model / "adapter_config.json").read_text().replace('"r": 4', '"r": 4 ')
    )
    main_head = hub.commits_on("org/pr")[0]
    upload = upload_to_hf_hub("org/pr", adapter_model, gateway=gateway_address, create_pr=True)
    assert "/discussions/1" in upload.commit_url
    assert hub.commits_on("org/pr")[0] == main_head and hub.commits_on("org/pr", "refs/pr/1")


def test_authors_card_is_kept_unless_overwritten(gateway_address, full_model):
    from tunewire.model_card import render_model_card

    (full_model / "README.md").write_text("---\nlicense: mit\n---\n# My own words\n")
    kept = upload_to_hf_hub("org/card", full_model, gateway=gateway_address, dry_run=True)
    assert kept.model_card.endswith("# My own words\n")
    replaced = upload_to_hf_hub(
        "org/card", full_model, gateway=gateway_address, dry_run=True, overwrite_model_card=True
    )
    assert "library_name: transformers" in replaced.model_card
    # the trainer's card, rendered before the repo was known, is re-rendered with the repo id
    (full_model / "README.md").write_text(render_model_card(full_model))
    rerendered = upload_to_hf_hub("org/card", full_model, gateway=gateway_address, dry_run=True)
    assert "from_pretrained('org/card')" in rerendered.model_card


def test_streamed_copies_are_released_when_uploads_end(
    gateway, gateway_address, adapter_model, tmp_path
):
    dry = upload_to_hf_hub("org/rel", adapter_model, gateway=gateway_address, dry_run=True)
    done = upload_to_hf_hub("org/rel", adapter_model, gateway=gateway_address)
    for upload in (dry, done):
        updir = tmp_path / "gw" / "uploads" / upload.id
        assert (updir / "upload.json").is_file() and not (updir / "files").exists()
    assert not any((tmp_path / "gw" / "uploads" / ".staging").iterdir())


def test_server_paths_never_reach_the_hub(hub, gateway_address, adapter_model, tmp_path):
    """PEFT writes the base model's local path into adapter_config.json, the trainer its model
    paths into resolved_config.json: the Hub gets copies naming only the last component."""
    secret = "/srv/private/models/base-llama"
    adapter = json.loads((adapter_model / "adapter_config.json").read_text())
    adapter["base_model_name_or_path"] = secret
    (adapter_model / "adapter_config.json").write_text(json.dumps(adapter))
    (adapter_model / "resolved_config.json").write_text(
        json.dumps({"model_type": "llm", "base_model": secret, "trainer": {"epochs": 1}})
    )
    upload = upload_to_hf_hub("org/no-paths", adapter_model, gateway=gateway_address)
    assert upload.state == pb.Upload.SUCCEEDED
    assert secret not in upload.model_card and "<local>/base-llama" in upload.model_card
    path = snapshot_download(
        "org/no-paths", endpoint=hub.endpoint, token=TOKEN, cache_dir=tmp_path / "c"
    )
    sent = {p.name: p.read_text() for p in Path(path).iterdir() if p.suffix in (".json", ".md")}
    assert "resolved_config.json" in sent and "adapter_config.json" in sent
    assert not [name for name, text in sent.items() if "/srv/private" in text]
    assert json.loads(sent["adapter_config.json"])["base_model_name_or_path"] == (
        "<local>/base-llama"
    )
    # the artifact on disk is the trainer's, untouched
    assert secret in (adapter_model / "adapter_config.json").read_text()
