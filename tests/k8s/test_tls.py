"""k8s/components/tls (and tls-cli, its CLI Job side): every server serves TLS with the
certificate of the Secret tunewire-tls, mounted read-only where its settings name it, answers the
kubelet's probes on a declared plaintext health port, and the callers verify with its ca.crt.
Without the components the manifests are exactly what they were.

The settings are read as the services read them: each service's own argument parser, given the
container's arguments and environment, then `security_from_args` and `ClientSecurity.from_env`,
so a misspelt variable or flag fails here rather than in a pod that never turns ready."""

from __future__ import annotations

import copy
import importlib
import os
import textwrap

import pytest

from tests.k8s.kustomize import render
from tests.k8s.manifests import (
    HEALTH_NAMES,
    K8S,
    container_env,
    deployed_with,
    expand,
    grpc_containers,
    pod_templates,
    rendered,
    workloads,
)
from tests.k8s.test_security import secret_file
from tunewire.server_flags import security_from_args
from tunewire.tls import ClientSecurity

TLS_SECRET = "tunewire-tls"
CALLS_PEERS = {"services.embedder", "services.trainer", "services.hub_gateway"}
# What the components add to a container, by name, and nothing else.
TLS_ENV = {
    "TUNEWIRE_SERVER_TLS_CERT",
    "TUNEWIRE_SERVER_TLS_KEY",
    "TUNEWIRE_TLS_CA",
    "TUNEWIRE_HEALTH_PORT",
}
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def _with_component(tmp_path, layer: str) -> list[dict]:
    """`layer` with k8s/components/tls, as an operator's own overlay would include it."""
    (tmp_path / "kustomization.yaml").write_text(
        textwrap.dedent(f"""\
        resources: [{K8S / "overlays" / layer if layer != "base" else K8S / "base"}]
        components: [{K8S / "components" / "tls"}]
        """)
    )
    return render(tmp_path)


@pytest.fixture(params=["cpu-dev-tls", "base+tls", "gpu+tls"])
def tls_docs(request, tmp_path) -> list[dict]:
    if request.param == "cpu-dev-tls":
        return rendered("cpu-dev-tls")
    return _with_component(tmp_path, request.param.removesuffix("+tls"))


def _parsed(module: str, c: dict, env: dict[str, str], monkeypatch):
    """The service's own parsing of the container's arguments under its environment."""
    for name in list(os.environ):
        if name.startswith("TUNEWIRE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # The Secret's files exist in the pod, not here: parse without the start-up readability check.
    monkeypatch.setattr("tunewire.server_flags._check_readable", lambda args: None)
    parser = importlib.import_module(f"{module}.__main__").build_parser()
    return parser.parse_args([expand(a, env) for a in c.get("args", [])])


def test_every_server_serves_tls_from_the_secret_and_is_probed_in_plaintext(tls_docs, monkeypatch):
    found = set()
    servers = [(t, c, m) for t, c, m in grpc_containers(tls_docs) if m != "cli"]
    for template, c, module in servers:
        found.add(module)
        where = c["name"]
        env = container_env(c, tls_docs)
        args = _parsed(module, c, env, monkeypatch)
        security = security_from_args(args)
        assert security.tls is not None, f"{where}: serves plaintext"
        assert secret_file(template, c, str(security.tls.cert)) == (TLS_SECRET, "tls.crt")
        assert secret_file(template, c, str(security.tls.key)) == (TLS_SECRET, "tls.key")
        # TLS with tokens, not mutual TLS (k8s/README.md says how to turn that on).
        assert security.tls.client_ca is None, where
        ports = {p["containerPort"]: p for p in c["ports"]}
        assert security.health_port in ports and security.health_port != args.port, where
        assert ports[security.health_port]["name"] == "health", where
        for probe in PROBES:
            assert c[probe]["grpc"]["port"] == security.health_port, f"{where}: {probe}"
            assert c[probe]["grpc"]["service"] == HEALTH_NAMES[module], f"{where}: {probe}"
        peers = ClientSecurity.from_env(env)
        if module in CALLS_PEERS:
            assert peers.uses_tls and peers.cert is None, f"{where}: calls its peers in plaintext"
            assert secret_file(template, c, str(peers.ca)) == (TLS_SECRET, "ca.crt"), where
        else:
            assert not peers.uses_tls, f"{where}: {module} calls no peer"
    assert found == set(HEALTH_NAMES), found


def test_the_cli_job_verifies_the_trainer_with_the_ca():
    docs = deployed_with("train-cli-tls")
    (job,) = [d for d in rendered("train-cli-tls") if d["kind"] == "Job"]
    (template,) = pod_templates(job)
    (c,) = template["spec"]["containers"]
    client = ClientSecurity.from_env(container_env(c, docs))
    assert client.uses_tls and client.cert is None
    assert secret_file(template, c, str(client.ca)) == (TLS_SECRET, "ca.crt")


def _without_tls(docs: list[dict]) -> list[dict]:
    """`docs` with what the components add taken out again."""
    docs = copy.deepcopy(docs)
    for doc in workloads(docs):
        for template in pod_templates(doc):
            spec = template["spec"]
            spec["volumes"] = [v for v in spec["volumes"] if v["name"] != "tls"]
            for c in spec["containers"]:
                c["env"] = [v for v in c["env"] if v["name"] not in TLS_ENV]
                c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != "tls"]
                if "ports" in c:
                    c["ports"] = [p for p in c["ports"] if p["name"] != "health"]
                for probe in PROBES:
                    if probe in c and "grpc" in c[probe]:
                        c[probe]["grpc"]["port"] = int(c["args"][c["args"].index("--port") + 1])
                    elif probe in c:  # the HTTP front door's probes go over HTTPS
                        c[probe]["httpGet"].pop("scheme", None)
    return docs


def _key(doc: dict) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


@pytest.mark.parametrize(
    "with_tls, without", [("cpu-dev-tls", "cpu-dev"), ("train-cli-tls", "train-cli")]
)
def test_the_components_change_nothing_else(with_tls, without):
    assert sorted(_without_tls(rendered(with_tls)), key=_key) == sorted(rendered(without), key=_key)


@pytest.mark.parametrize("layer", ["base", "cpu-dev", "gpu", "train-cli"])
def test_without_the_components_nothing_mentions_tls(layer):
    text = repr(rendered(layer))
    assert TLS_SECRET not in text
    assert not any(name in text for name in TLS_ENV)
