"""Our own rules for k8s/, over every rendering (and the PyTorchJob): probes, resources,
security, images, selectors, references, disruption budgets, network reachability, and that the
settings the manifests carry agree with each other and with the code."""

from __future__ import annotations

import csv
import io
import re
import tomllib

import pytest
import yaml

from tests.k8s.kustomize import split_image
from tests.k8s.manifests import (
    HEALTH_NAMES,
    JOB_LAYERS,
    KUSTOMIZATIONS,
    ROOT,
    SERVICE_LAYERS,
    container_env,
    deployed_with,
    find,
    pod_templates,
    pytorchjob,
    quantity,
    rendered,
    selects,
    workloads,
)

ALL = list(KUSTOMIZATIONS)
# Secrets the operator creates (k8s/README.md says how); no Secret values live in the repository.
EXTERNAL_SECRETS = {"hub-token", "tunewire-auth", "tunewire-tls"}
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE = "ghcr.io/tunewire/tunewire"


def _docs_with_pytorchjob(name):
    docs = rendered(name)
    return docs + [pytorchjob()] if name == "generative-multinode" else docs


def _containers(docs):
    for doc in workloads(docs):
        for template in pod_templates(doc):
            for c in template["spec"].get("initContainers", []) + template["spec"]["containers"]:
                yield doc, template, c


@pytest.mark.parametrize("name", ALL)
def test_resources_requests_and_limits(name):
    for doc, _, c in _containers(_docs_with_pytorchjob(name)):
        where = f"{name}: {doc['kind']}/{doc['metadata']['name']}/{c['name']}"
        requests = c.get("resources", {}).get("requests", {})
        limits = c.get("resources", {}).get("limits", {})
        for key in ("cpu", "memory"):
            assert key in requests and key in limits, f"{where}: {key} request and limit"
            assert quantity(requests[key]) <= quantity(limits[key]), f"{where}: {key}"
        gpu = "nvidia.com/gpu"
        if gpu in requests or gpu in limits:
            # Extended resources cannot be overcommitted: request == limit, whole devices.
            assert requests.get(gpu) == limits.get(gpu), where
            assert float(limits[gpu]).is_integer() and quantity(limits[gpu]) >= 1, where


@pytest.mark.parametrize("name", ALL)
def test_security_context(name):
    for doc, template, c in _containers(_docs_with_pytorchjob(name)):
        where = f"{name}: {doc['kind']}/{doc['metadata']['name']}/{c['name']}"
        pod = template["spec"].get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, where
        assert pod.get("runAsUser", 0) != 0 and pod.get("runAsGroup", 0) != 0, where
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert template["spec"].get("automountServiceAccountToken") is False, where
        assert not template["spec"].get("hostNetwork") and not template["spec"].get("hostPID")
        sc = c.get("securityContext", {})
        assert sc.get("runAsNonRoot") is True, where
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert sc.get("readOnlyRootFilesystem") is True, where
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
        assert not sc.get("capabilities", {}).get("add"), where
        assert not sc.get("privileged"), where
        assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert sc.get("runAsUser", pod["runAsUser"]) != 0, where
        # A read-only root needs a writable /tmp (Python, torch and Hugging Face write there).
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{where}: no writable /tmp"
        volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
        for m in c.get("volumeMounts", []):
            v = volumes.get(m["name"])
            if v is not None and "emptyDir" in v:
                assert "sizeLimit" in v["emptyDir"], f"{where}: emptyDir {v['name']} unbounded"


def _runs_as_dockerfile_user():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    users = set(re.findall(r"^USER (\d+):(\d+)", text, re.M))
    assert len(users) == 1, users
    return tuple(int(x) for x in users.pop())


@pytest.mark.parametrize("name", ALL)
def test_pods_run_as_the_image_user(name):
    uid, gid = _runs_as_dockerfile_user()
    for doc in workloads(_docs_with_pytorchjob(name)):
        for template in pod_templates(doc):
            pod = template["spec"]["securityContext"]
            assert (pod["runAsUser"], pod["runAsGroup"]) == (uid, gid), doc["metadata"]["name"]
            if "fsGroup" in pod:
                assert pod["fsGroup"] == gid


@pytest.mark.parametrize("name", ALL)
def test_images_pinned_to_the_project_version(name):
    gpu = name in ("gpu", "generative-multinode")
    for doc, _, c in _containers(_docs_with_pytorchjob(name)):  # noqa: B007
        image_name, tag, digest = split_image(c["image"])
        assert tag or digest, f"{c['image']}: untagged"
        assert tag != "latest", c["image"]
        assert image_name == IMAGE, c["image"]
        # The tag names the project version and a Dockerfile target (tests/k8s/test_docker.py).
        assert tag == f"{VERSION}-{'gpu' if gpu else 'cpu'}", c["image"]
        assert c.get("imagePullPolicy") == "IfNotPresent"


def _service_of(container):
    command = container.get("command", [])
    if command[:2] == ["python", "-m"]:
        return command[2]
    return None


@pytest.mark.parametrize("name", SERVICE_LAYERS)
def test_long_running_containers_have_grpc_probes(name):
    docs = rendered(name)
    long_running = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    assert {d["metadata"]["name"] for d in long_running} == {
        "embedder",
        "trainer",
        "hub-gateway",
        "http",
    }
    for doc in long_running:
        for c in doc["spec"]["template"]["spec"]["containers"]:
            where = f"{name}: {doc['metadata']['name']}/{c['name']}"
            module = _service_of(c)
            if module == "clients.http":  # the HTTP front door: HTTP probes of /health
                port_arg = int(c["args"][c["args"].index("--port") + 1])
                assert port_arg in {p["containerPort"] for p in c["ports"]}, where
                for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                    probe = c.get(kind, {}).get("httpGet", {})
                    got = (probe.get("path"), probe.get("port"))
                    assert got == ("/health", port_arg), f"{where}: {kind}"
                assert doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 30
                continue
            assert module in HEALTH_NAMES, f"{where}: runs {c.get('command')}"
            ports = {p["containerPort"] for p in c["ports"]}
            port_arg = int(c["args"][c["args"].index("--port") + 1])
            assert port_arg in ports, f"{where}: --port {port_arg} is not a containerPort"
            # With TLS (k8s/components/tls) the probes go to the plaintext health port.
            health_port = container_env(c, docs).get("TUNEWIRE_HEALTH_PORT")
            probe_port = int(health_port) if health_port else port_arg
            assert probe_port in ports, f"{where}: health port {probe_port} is not a containerPort"
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = c.get(kind)
                assert probe and "grpc" in probe, f"{where}: {kind} must be a native gRPC probe"
                assert probe["grpc"]["port"] == probe_port, f"{where}: {kind} port"
                assert probe["grpc"].get("service") == HEALTH_NAMES[module], f"{where}: {kind}"
            startup = c["startupProbe"]
            budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
            if module == "services.embedder":
                # Loading an encoder (download, weights to the device) takes minutes.
                assert budget >= 600, f"{where}: startup budget {budget}s"
            # The pod must outlive the server's 30 s drain on SIGTERM (tunewire/server.py).
            assert doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 30


@pytest.mark.parametrize("name", SERVICE_LAYERS)
def test_gpu_only_in_the_gpu_overlay(name):
    docs = rendered(name)
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for c in doc["spec"]["template"]["spec"]["containers"]:
            gpus = c["resources"]["limits"].get("nvidia.com/gpu")
            if name == "gpu" and doc["metadata"]["name"] in ("embedder", "trainer"):
                assert gpus == "1", f"{doc['metadata']['name']}: one GPU"
            else:
                assert gpus is None, f"{name}: {doc['metadata']['name']} asks for a GPU"
    if name == "gpu":
        assert find(docs, "StatefulSet", "embedder")["spec"]["replicas"] >= 2
        pdb = find(docs, "PodDisruptionBudget", "embedder")
        assert pdb["spec"].get("minAvailable") == 1 and "maxUnavailable" not in pdb["spec"]


@pytest.mark.parametrize("name", ALL)
def test_services_select_pods_and_ports(name):
    docs = rendered(name)
    templates = [(d, t) for d in workloads(docs) for t in pod_templates(d)]
    for svc in (d for d in docs if d["kind"] == "Service"):
        selector = svc["spec"]["selector"]
        hits = [
            (d, t)
            for d, t in templates
            if d["metadata"]["namespace"] == svc["metadata"]["namespace"]
            and selects({"matchLabels": selector}, t["metadata"].get("labels"))
        ]
        assert hits, f"{name}: Service {svc['metadata']['name']} selects no pod template"
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for d, t in hits:
                container_ports = [p for c in t["spec"]["containers"] for p in c.get("ports", [])]
                assert any(
                    p.get("name") == target or p["containerPort"] == target for p in container_ports
                ), f"Service {svc['metadata']['name']} port {target} not on {d['metadata']['name']}"
    # A StatefulSet's serviceName is a headless Service that selects it.
    for sts in (d for d in docs if d["kind"] == "StatefulSet"):
        svc = find(docs, "Service", sts["spec"]["serviceName"])
        assert svc["spec"].get("clusterIP") == "None"
        assert selects(
            {"matchLabels": svc["spec"]["selector"]}, sts["spec"]["template"]["metadata"]["labels"]
        )
    # A workload's selector selects its own template.
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            assert selects(d["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])


@pytest.mark.parametrize("name", ALL)
def test_references_exist(name):
    docs = _docs_with_pytorchjob(name)
    cluster = deployed_with(name) + ([pytorchjob()] if name == "generative-multinode" else [])
    have = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in cluster}
    secrets_used: dict[str, set] = {}
    for doc in workloads(docs):
        ns = doc["metadata"]["namespace"]
        vct = {v["metadata"]["name"] for v in doc["spec"].get("volumeClaimTemplates", [])}
        for template in pod_templates(doc):
            spec = template["spec"]
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            assert not (set(volumes) & vct), "a volume shadows a volumeClaimTemplate"
            for v in volumes.values():
                if "configMap" in v:
                    assert ("ConfigMap", ns, v["configMap"]["name"]) in have, v
                if "persistentVolumeClaim" in v:
                    claim = v["persistentVolumeClaim"]["claimName"]
                    assert ("PersistentVolumeClaim", ns, claim) in have, v
                if "secret" in v:
                    keys = {i["key"] for i in v["secret"].get("items", [])}
                    secrets_used.setdefault(v["secret"]["secretName"], set()).update(keys)
            for c in spec.get("initContainers", []) + spec["containers"]:
                for m in c.get("volumeMounts", []):
                    assert m["name"] in volumes or m["name"] in vct, (
                        f"{doc['metadata']['name']}/{c['name']}: volume {m['name']} undefined"
                    )
                for src in c.get("envFrom", []):
                    if "configMapRef" in src:
                        assert ("ConfigMap", ns, src["configMapRef"]["name"]) in have, src
                    if "secretRef" in src:
                        secrets_used.setdefault(src["secretRef"]["name"], set())
                for var in c.get("env", []):
                    ref = var.get("valueFrom", {})
                    if "configMapKeyRef" in ref:
                        assert ("ConfigMap", ns, ref["configMapKeyRef"]["name"]) in have
                    if "secretKeyRef" in ref:
                        secrets_used.setdefault(ref["secretKeyRef"]["name"], set()).add(
                            ref["secretKeyRef"]["key"]
                        )
    for secret in secrets_used:
        in_cluster = any(k == "Secret" and n == secret for k, _, n in have)
        assert in_cluster or secret in EXTERNAL_SECRETS, f"Secret {secret} is defined nowhere"
    readme = (ROOT / "k8s" / "README.md").read_text()
    for secret in set(secrets_used) & EXTERNAL_SECRETS:
        # The README's command creates the Secret with the keys the pods mount.
        command = re.search(
            rf"kubectl (?:-n \S+ )?create secret generic {secret}(\s+(?:\\\n\s*)?--from-\S+)+",
            readme,
        )
        assert command, f"k8s/README.md must say how to create the Secret {secret}"
        for key in secrets_used[secret]:
            assert f"--from-file={key}=" in command.group(
                0
            ) or f"--from-literal={key}=" in command.group(0), f"{secret}: key {key}"


@pytest.mark.parametrize("name", SERVICE_LAYERS)
def test_every_service_workload_has_a_disruption_budget(name):
    docs = rendered(name)
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            labels = doc["spec"]["template"]["metadata"]["labels"]
            hits = [p for p in pdbs if selects(p["spec"]["selector"], labels)]
            assert len(hits) == 1, f"{doc['metadata']['name']}: {len(hits)} PDBs"


# --- Network reachability ---------------------------------------------------------------------

KUBE_DNS = {
    "namespace": "kube-system",
    "labels": {"k8s-app": "kube-dns"},
    "ns_labels": {"kubernetes.io/metadata.name": "kube-system"},
}
INTERNET = {"external": True}


def _peer_matches(peer, policy_ns, endpoint):
    if "ipBlock" in peer:
        # Conservatively, an ipBlock may match pod IPs too (it does on some CNIs).
        return True
    if endpoint.get("external"):
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], endpoint["ns_labels"]):
            return False
    elif endpoint["namespace"] != policy_ns:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], endpoint["labels"])


def _port_matches(rule, port, protocol):
    if not rule.get("ports"):
        return True
    return any(
        p.get("protocol", "TCP") == protocol and p.get("port") in (None, port)
        for p in rule["ports"]
    )


def _allowed(policies, direction, pod, peer, port, protocol):
    """Does the policy set let `pod` send (Egress) to / receive (Ingress) from `peer`?"""
    if pod.get("external"):
        return True  # outside the cluster: no policy applies
    field, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    applying = [
        p
        for p in policies
        if p["metadata"]["namespace"] == pod["namespace"]
        and selects(p["spec"]["podSelector"], pod["labels"])
        and direction in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not applying:
        return True
    for policy in applying:
        for rule in policy["spec"].get(field, []):
            peers = rule.get(peers_key)
            if (
                not peers or any(_peer_matches(x, pod["namespace"], peer) for x in peers)
            ) and _port_matches(rule, port, protocol):
                return True
    return False


def _can_connect(policies, src, dst, port, protocol="TCP"):
    return _allowed(policies, "Egress", src, dst, port, protocol) and _allowed(
        policies, "Ingress", dst, src, port, protocol
    )


def _pods(docs):
    ns_labels = {
        d["metadata"]["name"]: {
            "kubernetes.io/metadata.name": d["metadata"]["name"],
            **d["metadata"].get("labels", {}),
        }
        for d in docs
        if d["kind"] == "Namespace"
    }
    pods = {}
    for doc in workloads(docs):
        ns = doc["metadata"]["namespace"]
        pods[doc["metadata"]["name"]] = {
            "namespace": ns,
            "labels": pod_templates(doc)[0]["metadata"]["labels"],
            "ns_labels": ns_labels.get(ns, {"kubernetes.io/metadata.name": ns}),
        }
    return pods


@pytest.mark.parametrize("name", SERVICE_LAYERS)
def test_network_policies_allow_only_what_each_caller_needs(name):
    docs = deployed_with("train-cli") if name == "base" else rendered(name) + rendered("train-cli")
    docs = docs + rendered("generative-multinode")
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pods = _pods(docs)
    cli, trainer, embedder = pods["tunewire-train-cli"], pods["trainer"], pods["embedder"]
    gateway, worker, http = pods["hub-gateway"], pods["tunewire-generative"], pods["http"]
    http_client = {**cli, "labels": {"tunewire.io/http-client": "true"}}
    allowed = [
        (cli, trainer, 50052),
        (trainer, embedder, 50051),
        (embedder, trainer, 50052),  # a job's head, for online prediction
        (http_client, http, 8000),
        (http, embedder, 50051),
        (http, trainer, 50052),
        (trainer, gateway, 50053),
        (gateway, trainer, 50052),
        (gateway, INTERNET, 443),
        (embedder, INTERNET, 443),
        (trainer, INTERNET, 443),  # model downloads
        (worker, worker, 29400),
        (worker, worker, 41234),  # rendezvous, NCCL/gloo
    ]
    for src, dst, port in allowed:
        assert _can_connect(policies, src, dst, port), (src, dst, port)
    denied = [
        (cli, embedder, 50051),
        (cli, gateway, 50053),
        (cli, INTERNET, 443),
        (embedder, gateway, 50053),
        (cli, http, 8000),
        (http, gateway, 50053),
        (http, INTERNET, 443),
        (INTERNET, http, 8000),
        (gateway, embedder, 50051),
        (trainer, INTERNET, 80),
        (gateway, INTERNET, 80),
        (worker, trainer, 50052),
        (worker, embedder, 50051),
        (cli, worker, 29400),
        (trainer, worker, 29400),
        (INTERNET, trainer, 50052),
        (INTERNET, embedder, 50051),
        (INTERNET, gateway, 50053),
    ]
    for src, dst, port in denied:
        assert not _can_connect(policies, src, dst, port), (src, dst, port)
    # Prometheus, in its own namespace, scrapes each service's metrics port; nobody else does.
    scraper = {
        "namespace": "monitoring",
        "labels": {"tunewire.io/metrics-scraper": "true"},
        "ns_labels": {"kubernetes.io/metadata.name": "monitoring"},
    }
    for service in (trainer, embedder, gateway):
        assert _can_connect(policies, scraper, service, 9464)
        assert not _can_connect(policies, scraper, service, 50052)
        for other in (cli, worker, INTERNET):
            assert not _can_connect(policies, other, service, 9464), (other, service)
    for pod in pods.values():
        assert _can_connect(policies, pod, KUBE_DNS, 53, "UDP")
        assert _can_connect(policies, pod, KUBE_DNS, 53, "TCP")
        assert not _can_connect(policies, pod, KUBE_DNS, 80)
    # No service listens on 443, so "443 anywhere" reaches no pod of ours.
    for d in docs:
        if d["kind"] == "Service":
            assert all(p["port"] != 443 for p in d["spec"]["ports"])


# --- Settings that must agree ---------------------------------------------------------------


@pytest.mark.parametrize("name", SERVICE_LAYERS + ("train-cli",))
def test_service_addresses_name_real_services(name):
    docs = deployed_with(name)
    settings = find(docs, "ConfigMap", "tunewire-settings")
    ns = settings["metadata"]["namespace"]
    expected = {
        "TUNEWIRE_EMBEDDER": ("embedder", 50051),
        "TUNEWIRE_TRAINER": ("trainer", 50052),
        "TUNEWIRE_HUB_GATEWAY": ("hub-gateway", 50053),
    }
    for var, (svc_name, port) in expected.items():
        value = settings["data"][var]
        if var == "TUNEWIRE_EMBEDDER" and "," in value:
            _check_replica_list(docs, value, ns, port)
            continue
        match = re.fullmatch(r"dns:///([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", value)
        assert match, f"{var}={value}: not a dns:/// cluster name"
        assert match.group(2) == ns, f"{var} names namespace {match.group(2)}, deployed in {ns}"
        svc = find(docs, "Service", match.group(1))
        assert svc["metadata"]["name"] == svc_name
        assert svc["spec"]["clusterIP"] == "None", "headless, so clients see every replica"
        assert int(match.group(3)) == port
        assert port in [p["port"] for p in svc["spec"]["ports"]]


def _check_replica_list(docs, value: str, ns: str, port: int) -> None:
    """A sharded embedder list names every replica of the StatefulSet by its stable name."""
    sts = find(docs, "StatefulSet", "embedder")
    names = []
    for item in value.split(","):
        match = re.fullmatch(
            r"embedder-(\d+)\.([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", item
        )
        assert match, f"TUNEWIRE_EMBEDDER item {item}: not a replica's stable name"
        assert match.group(2) == sts["spec"]["serviceName"] and match.group(3) == ns
        assert int(match.group(4)) == port
        names.append(int(match.group(1)))
    assert sorted(names) == list(range(sts["spec"]["replicas"])), "every replica, once"


def test_generative_job_is_consistent():
    docs = rendered("generative-multinode")
    job = find(docs, "Job", "tunewire-generative")
    settings = find(docs, "ConfigMap", "generative-multinode")["data"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(settings["NNODES"])
    pod = spec["template"]["spec"]
    svc = find(docs, "Service", pod["subdomain"])
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert selects({"matchLabels": svc["spec"]["selector"]}, spec["template"]["metadata"]["labels"])
    host, port = settings["RDZV_ENDPOINT"].rsplit(":", 1)
    # Pod 0 of an Indexed Job is <job>-0, reachable as <job>-0.<subdomain>.
    assert host == f"{job['metadata']['name']}-0.{pod['subdomain']}"
    (c,) = pod["containers"]
    assert int(port) in [p["containerPort"] for p in c["ports"]]
    assert int(port) in [p["port"] for p in svc["spec"]["ports"]]
    gpus = int(c["resources"]["limits"]["nvidia.com/gpu"])
    assert gpus == int(settings["NPROC_PER_NODE"])
    mounts = [m["mountPath"] for m in c["volumeMounts"]]
    assert any(settings["JOB_DIR"].startswith(m + "/") for m in mounts), "job dir on the volume"
    pvc = find(docs, "PersistentVolumeClaim", "generative-jobs")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "every node mounts the job dir"

    # The PyTorchJob variant: the same nodes, GPUs and command.
    pj = pytorchjob()
    replicas = pj["spec"]["pytorchReplicaSpecs"]
    assert sum(r["replicas"] for r in replicas.values()) == int(settings["NNODES"])
    (pc,) = replicas["Master"]["template"]["spec"]["containers"]
    assert pc["resources"] == c["resources"]
    assert pc["envFrom"] == c["envFrom"]
    assert "tunewire-generative-master-0:" + port in pc["args"][0]
    assert [p["name"] for p in pc["ports"]] == ["pytorchjob-port"]
    assert pj["metadata"]["namespace"] == job["metadata"]["namespace"]


def test_train_cli_job_input_is_a_valid_config_and_data_set():
    from services.trainer.model_types import resolve

    docs = rendered("train-cli")
    job = find(docs, "Job", "tunewire-train-cli")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["python", "clients/cli.py"]
    args = c["args"]
    assert args[0] == "train" and "--json" in args
    cm = find(docs, "ConfigMap", "train-cli-input")
    mount = next(m for m in c["volumeMounts"] if m["name"] == "input")["mountPath"]
    config_key = args[args.index("--config") + 1].removeprefix(mount + "/")
    data_key = args[args.index("--dataset") + 1].removeprefix(mount + "/")
    assert args[args.index("--trainer") + 1] == "$(TUNEWIRE_TRAINER)"
    assert container_env(c, deployed_with("train-cli"))["TUNEWIRE_TRAINER"].startswith("dns:///")
    raw = yaml.safe_load(cm["data"][config_key])
    config = resolve(raw)
    rows = list(csv.DictReader(io.StringIO(cm["data"][data_key])))
    assert len(rows) >= 20
    columns = set(rows[0])
    for feature in config.input_features + config.output_features:
        assert feature.column in columns, f"no column {feature.column} in {data_key}"
    labels = {r[config.output_features[0].column] for r in rows}
    assert labels == {"true", "false"}
    assert job["spec"]["template"]["metadata"]["labels"]["tunewire.io/trainer-client"] == "true"


@pytest.mark.parametrize("layer", JOB_LAYERS)
def test_job_layers_share_the_base_namespace(layer):
    ns = {d["metadata"].get("namespace") for d in rendered(layer)}
    assert ns == {find(rendered("base"), "Namespace", "tunewire")["metadata"]["name"]}


def test_train_cli_job_uses_flags_the_cli_has():
    """Every option the Job passes is one `clients/cli.py train` accepts (its own --help)."""
    import subprocess
    import sys

    (c,) = find(rendered("train-cli"), "Job", "tunewire-train-cli")["spec"]["template"]["spec"][
        "containers"
    ]
    script = ROOT / c["command"][1]
    assert script.is_file(), f"{script} does not exist"
    out = subprocess.run(
        [sys.executable, str(script), c["args"][0], "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    accepted = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", out.stdout))
    for arg in c["args"][1:]:
        if arg.startswith("--"):
            assert arg in accepted, f"clients/cli.py train has no option {arg}"
