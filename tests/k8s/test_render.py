"""The renderer in tests/k8s/kustomize.py: its semantics, and agreement with a real kustomize."""

from __future__ import annotations

import shutil
import subprocess
import textwrap

import pytest
import yaml

from tests.k8s.kustomize import KustomizeError, render, split_image, strategic_merge
from tests.k8s.manifests import KUSTOMIZATIONS, rendered


def _kustomize_command():
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def _canonical(node, field=None):
    """Order-insensitive where Kubernetes is: objects by id, keyed lists by their key."""
    if isinstance(node, dict):
        return {k: _canonical(v, k) for k, v in node.items()}
    if isinstance(node, list):
        items = [_canonical(i) for i in node]
        for key in ("name", "mountPath", "containerPort", "port"):
            if items and all(isinstance(i, dict) and key in i for i in items):
                return sorted(items, key=lambda i: str(i[key]))
        return items
    return node


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_matches_kustomize(name):
    command = _kustomize_command()
    if command is None:
        pytest.skip("no kustomize or kubectl binary on PATH to compare with")
    out = subprocess.run(
        [*command, str(KUSTOMIZATIONS[name])], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    theirs = sorted(
        (_canonical(d) for d in yaml.safe_load_all(out.stdout) if d),
        key=lambda d: (d["kind"], d["metadata"]["name"]),
    )
    ours = sorted(
        (_canonical(d) for d in rendered(name)), key=lambda d: (d["kind"], d["metadata"]["name"])
    )
    assert [(d["kind"], d["metadata"]["name"]) for d in ours] == [
        (d["kind"], d["metadata"]["name"]) for d in theirs
    ]
    for a, b in zip(ours, theirs):
        assert a == b, f"{a['kind']}/{a['metadata']['name']} differs from kustomize's"


def test_strategic_merge_semantics():
    base = {
        "spec": {
            "containers": [
                {
                    "name": "a",
                    "image": "x",
                    "args": ["1", "2"],
                    "env": [{"name": "E", "value": "1"}],
                    "ports": [{"containerPort": 1, "name": "p"}],
                },
                {"name": "b", "image": "y"},
            ],
            "tolerations": [{"key": "k"}],
            "replicas": 1,
            "drop": {"me": 1},
        }
    }
    patch = {
        "spec": {
            "containers": [
                {
                    "name": "a",
                    "args": ["3"],
                    "env": [{"name": "F", "value": "2"}],
                    "ports": [{"containerPort": 1, "protocol": "TCP"}],
                },
                {"name": "c", "image": "z"},
            ],
            "tolerations": [{"key": "j"}],
            "drop": None,
        }
    }
    out = strategic_merge(base, patch)
    a, b, c = out["spec"]["containers"]
    assert a["image"] == "x" and a["args"] == ["3"]  # scalar lists are replaced
    assert [e["name"] for e in a["env"]] == ["E", "F"]  # env merges by name
    assert a["ports"] == [{"containerPort": 1, "name": "p", "protocol": "TCP"}]
    assert b == {"name": "b", "image": "y"} and c["name"] == "c"
    assert out["spec"]["tolerations"] == [{"key": "j"}]  # no merge key: replaced
    assert "drop" not in out["spec"] and out["spec"]["replicas"] == 1
    assert base["spec"]["containers"][0]["args"] == ["1", "2"]  # the input is untouched


def test_split_image():
    assert split_image("ghcr.io/a/b:1.0-cpu") == ("ghcr.io/a/b", "1.0-cpu", None)
    assert split_image("localhost:5000/b") == ("localhost:5000/b", None, None)
    assert split_image("b@sha256:ab") == ("b", None, "sha256:ab")


def _write(tmp_path, files):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text))


CM = """
apiVersion: v1
kind: ConfigMap
metadata:
  name: c
data: {a: "1"}
---
apiVersion: v1
kind: Namespace
metadata:
  name: n
"""


def test_namespace_labels_images(tmp_path):
    _write(
        tmp_path,
        {
            "cm.yaml": CM,
            "d.yaml": """
        apiVersion: batch/v1
        kind: Job
        metadata: {name: j}
        spec:
          template:
            spec:
              containers: [{name: x, image: "reg/img:old"}, {name: y, image: other}]
        """,
            "kustomization.yaml": """
        resources: [cm.yaml, d.yaml]
        namespace: ns
        labels:
          - pairs: {team: t}
            includeTemplates: true
        images:
          - {name: reg/img, newTag: "2"}
        """,
        },
    )
    docs = {d["kind"]: d for d in render(tmp_path)}
    assert docs["ConfigMap"]["metadata"]["namespace"] == "ns"
    assert "namespace" not in docs["Namespace"]["metadata"]
    assert docs["Job"]["spec"]["template"]["metadata"]["labels"] == {"team": "t"}
    images = [c["image"] for c in docs["Job"]["spec"]["template"]["spec"]["containers"]]
    assert images == ["reg/img:2", "other"]


def test_components_extend_what_their_parent_has(tmp_path):
    """A component sees the parent's resources (its patch applies to them), adds its own, and
    the parent's patches run after it; a Component is refused where a resource is expected."""
    _write(
        tmp_path,
        {
            "cm.yaml": CM,
            "kustomization.yaml": """
        resources: [cm.yaml]
        components: [comp]
        patches: [{path: last.yaml}]
        """,
            "last.yaml": """
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: c}
        data: {a: "3"}
        """,
            "comp/kustomization.yaml": """
        apiVersion: kustomize.config.k8s.io/v1alpha1
        kind: Component
        resources: [extra.yaml]
        patches: [{path: patch.yaml}]
        """,
            "comp/extra.yaml": """
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: extra}
        """,
            "comp/patch.yaml": """
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: c}
        data: {a: "2", b: "2"}
        """,
            "bad/kustomization.yaml": "resources: [../comp]\n",
        },
    )
    docs = {d["metadata"]["name"]: d for d in render(tmp_path)}
    assert docs["c"]["data"] == {"a": "3", "b": "2"}
    assert "extra" in docs and "n" in docs
    with pytest.raises(KustomizeError, match="Component"):
        render(tmp_path / "bad")
    with pytest.raises(KustomizeError, match="Component"):
        render(tmp_path / "comp")


@pytest.mark.parametrize(
    "kustomization, error",
    [
        ("resources: [cm.yaml]\ncommonLabels: {a: b}\n", NotImplementedError),
        (
            "resources: [cm.yaml]\nlabels: [{pairs: {a: b}, includeSelectors: true}]\n",
            NotImplementedError,
        ),
        ("resources: [missing.yaml]\n", KustomizeError),
        ("resources: [cm.yaml, cm.yaml]\n", KustomizeError),
        ("resources: [cm.yaml]\npatches: [{path: p.yaml}]\n", KustomizeError),
        (
            "resources: [cm.yaml]\npatches: [{path: p.yaml, target: {kind: ConfigMap}}]\n",
            NotImplementedError,
        ),
    ],
)
def test_refuses_what_it_does_not_render(tmp_path, kustomization, error):
    _write(
        tmp_path,
        {
            "cm.yaml": CM,
            "kustomization.yaml": kustomization,
            "p.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: nope}\n",
        },
    )
    with pytest.raises(error):
        render(tmp_path)
