"""Every rendered manifest validates against the Kubernetes schemas, strictly, offline."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.k8s.manifests import KUSTOMIZATIONS, pytorchjob, rendered

# The oldest Kubernetes we support, and the newest whose schemas kubernetes-validate bundles.
VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
CLI = Path(sys.executable).with_name("kubernetes-validate")


def _cli(path: Path, version: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CLI), "--strict", "-k", version, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_rendering_validates_strictly(name, tmp_path):
    docs = rendered(name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    for version in VERSIONS:
        out = _cli(path, version)
        assert out.returncode == 0, out.stdout + out.stderr
        # The CLI only warns (exit 0) on a kind it has no schema for: every document here must
        # have been checked, not skipped.
        assert "Couldn't find schema" not in out.stdout + out.stderr
        assert out.stdout.count(" passed for resource ") == len(docs)


def test_strict_validation_catches_a_stray_field(tmp_path):
    """The check above can fail: one misplaced field in a rendered StatefulSet is an error."""
    docs = copy.deepcopy(rendered("base"))
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    sts["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {"periodSeconds": 5}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    out = _cli(path, "1.30.0")
    assert out.returncode != 0
    assert "readinessprobe" in out.stdout + out.stderr


def test_pytorchjob_validates_where_schemas_exist():
    """kubernetes-validate has no schema for the PyTorchJob CRD: validate each replica's pod
    template as a core PodTemplate (strictly), and the custom resource's shape by hand."""
    job = pytorchjob()
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(job, "1.30.0", strict=True)
    assert job["apiVersion"] == "kubeflow.org/v1"
    assert set(job) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(job["spec"]) <= {"runPolicy", "pytorchReplicaSpecs", "elasticPolicy", "nprocPerNode"}
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"}
    assert replicas["Master"]["replicas"] == 1
    for role, spec in replicas.items():
        assert set(spec) <= {"replicas", "restartPolicy", "template"}, role
        assert spec["restartPolicy"] in {"Always", "OnFailure", "Never", "ExitCode"}
        containers = spec["template"]["spec"]["containers"]
        assert "pytorch" in [c["name"] for c in containers]  # the operator's required name
        template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {
                "name": f"pytorchjob-{role.lower()}",
                "namespace": job["metadata"]["namespace"],
            },
            "template": spec["template"],
        }
        for version in VERSIONS:
            kubernetes_validate.validate(template, version, strict=True)
