"""Rendered manifests and helpers shared by the tests in tests/k8s."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import yaml

from tests.k8s.kustomize import render

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
# Every kustomization an operator applies; the jobs are applied after an overlay.
KUSTOMIZATIONS = {
    "base": K8S / "base",
    "cpu-dev": K8S / "overlays" / "cpu-dev",
    "gpu": K8S / "overlays" / "gpu",
    # cpu-dev and train-cli with the TLS components (k8s/components/tls, tls-cli)
    "cpu-dev-tls": K8S / "overlays" / "cpu-dev-tls",
    "train-cli": K8S / "jobs" / "train-cli",
    "train-cli-tls": K8S / "jobs" / "train-cli-tls",
    "generative-multinode": K8S / "jobs" / "generative-multinode",
}
SERVICE_LAYERS = ("base", "cpu-dev", "gpu", "cpu-dev-tls")
JOB_LAYERS = ("train-cli", "train-cli-tls", "generative-multinode")
PYTORCHJOB = K8S / "extras" / "pytorchjob.yaml"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}

# The gRPC service each module serves (tunewire.v1), as the health service names it.
HEALTH_NAMES = {
    "services.embedder": "tunewire.v1.EmbedderService",
    "services.trainer": "tunewire.v1.TrainerService",
    "services.hub_gateway": "tunewire.v1.HubGatewayService",
}


@functools.cache
def _rendered(name: str) -> tuple:
    return tuple(render(KUSTOMIZATIONS[name]))


def rendered(name: str) -> list[dict]:
    """The rendering of one kustomization (a fresh copy each call is not needed: read-only)."""
    return list(_rendered(name))


def deployed_with(name: str) -> list[dict]:
    """What is in the cluster when `name` is applied: a job layer comes on top of the base."""
    docs = rendered(name)
    return docs + rendered("base") if name in JOB_LAYERS else docs


def pytorchjob() -> dict:
    docs = [d for d in yaml.safe_load_all(PYTORCHJOB.read_text()) if d]
    assert len(docs) == 1
    return docs[0]


def find(docs: list[dict], kind: str, name: str) -> dict:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} found"
    return hits[0]


def pod_templates(doc: dict) -> list[dict]:
    """The pod templates of a workload (or of each PyTorchJob replica)."""
    if doc["kind"] in WORKLOAD_KINDS:
        return [doc["spec"]["template"]]
    if doc["kind"] == "PyTorchJob":
        return [r["template"] for r in doc["spec"]["pytorchReplicaSpecs"].values()]
    return []


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if pod_templates(d)]


def grpc_containers(docs: list[dict]):
    """(template, container, what) for every container that serves or calls tunewire gRPC:
    `what` is the service module, or "cli" for the command-line client."""
    for doc in workloads(docs):
        for template in pod_templates(doc):
            for c in template["spec"]["containers"]:
                command = c.get("command", [])
                if command[:2] == ["python", "-m"] and command[2] in HEALTH_NAMES:
                    yield template, c, command[2]
                elif command == ["python", "clients/cli.py"]:
                    yield template, c, "cli"


def selects(selector: dict | None, labels: dict) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    if selector is None:
        return False
    labels = labels or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


_UNITS = {
    "": 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
}


def quantity(value) -> float:
    """A Kubernetes resource quantity as a number."""
    match = re.fullmatch(r"([0-9.]+)(m|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?", str(value))
    assert match, f"not a quantity: {value!r}"
    return float(match.group(1)) * _UNITS[match.group(2) or ""]


def expand(value: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion of command, args and env values: $(VAR) becomes the
    variable's value when it is defined, $$ is a literal $, anything else stays as it is."""
    out, i = [], 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$")
            i += 2
        elif value.startswith("$(", i) and ")" in value[i + 2 :]:
            end = value.index(")", i + 2)
            name = value[i + 2 : end]
            out.append(env[name] if name in env else value[i : end + 1])
            i = end + 1
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def container_env(container: dict, docs: list[dict]) -> dict[str, str]:
    """The environment the kubelet gives `container`: envFrom ConfigMaps, then env (with $(VAR)
    expansion against what is defined before it). Secrets and fieldRefs are not used here."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}, source
        cm = find(docs, "ConfigMap", source["configMapRef"]["name"])
        env.update({k: str(v) for k, v in cm.get("data", {}).items()})
    for var in container.get("env", []):
        assert "value" in var, f"only literal env values are expected: {var}"
        env[var["name"]] = expand(str(var["value"]), env)
    return env
