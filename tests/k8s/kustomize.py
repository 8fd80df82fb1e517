"""A small Kustomize renderer for the subset k8s/ uses, so the tests need no Go binary.

No kustomize is on PyPI or in Debian's archive (the `kustomize` PyPI package is an unrelated
generator; `pykustomize` needs Python >= 3.14), so this renders what our kustomizations use and
refuses everything else with NotImplementedError rather than rendering it wrongly:

- `resources`: files (one or more YAML documents) and directories holding a kustomization.yaml;
- `components`: directories holding a `kind: Component` kustomization. As in kustomize, each is
  built on top of what its parent has accumulated so far (the parent's resources, then earlier
  components): its resources are added to that list and its transformers run over all of it;
  the parent's own transformers run afterwards, over the result;
- `namespace`: set on every namespaced object;
- `labels` with `includeSelectors: false`: `metadata.labels` of every object and, with
  `includeTemplates: true`, the pod template labels of workloads and the volumeClaimTemplates
  labels of StatefulSets;
- `patches` with `path` and no `target`: strategic merge by apiVersion group, kind and name, with
  Kubernetes' merge keys for the lists we patch (containers, volumes, env, ports, volumeMounts),
  other lists replaced, `null` deleting a key;
- `images`: `newName`, `newTag`, `digest` on every container image of that name.

The transformers run in kustomize's order (patches, namespace, labels, images). When a kustomize
binary is available (`kubectl kustomize` or `kustomize`), tests/k8s/test_render.py checks that
this renderer's output equals it on every kustomization in k8s/.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
_SUPPORTED_KEYS = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "namespace",
    "labels",
    "patches",
    "images",
}
CLUSTER_SCOPED = {
    "Namespace",
    "PersistentVolume",
    "ClusterRole",
    "ClusterRoleBinding",
    "StorageClass",
    "PriorityClass",
    "CustomResourceDefinition",
    "RuntimeClass",
    "IngressClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}

# Strategic-merge keys of the lists we patch, by field name (from the Kubernetes API's
# x-kubernetes-patch-merge-key). A list under any other name is replaced by the patch.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}


class KustomizeError(ValueError):
    pass


def load_documents(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d or "metadata" not in d:
            raise KustomizeError(f"{path}: not a Kubernetes object: {str(d)[:80]}")
    return docs


def find_kustomization(directory: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return directory / name
    raise KustomizeError(f"{directory}: no kustomization.yaml")


def render(directory: str | Path) -> list[dict]:
    """Render the kustomization in `directory` to a list of objects."""
    return _build(Path(directory).resolve(), None)


def _build(directory: Path, accumulated: list[dict] | None) -> list[dict]:
    """Build a kustomization (`accumulated` None) or a component (`accumulated`: what its parent
    has so far, which the component extends and transforms)."""
    kfile = find_kustomization(directory)
    k = yaml.safe_load(kfile.read_text()) or {}
    unknown = set(k) - _SUPPORTED_KEYS
    if unknown:
        raise NotImplementedError(f"{kfile}: fields not supported by this renderer: {unknown}")
    is_component = k.get("kind", "Kustomization") == "Component"
    if is_component != (accumulated is not None):
        raise KustomizeError(f"{kfile}: a Component belongs in `components:`, and only there")
    objects: list[dict] = accumulated if accumulated is not None else []
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            objects.extend(_build(path, None))
        elif path.is_file():
            objects.extend(copy.deepcopy(load_documents(path)))
        else:
            raise KustomizeError(f"{kfile}: resource {entry!r} does not exist")
    _check_unique(objects, kfile)
    for entry in k.get("components", []):
        path = (directory / entry).resolve()
        if not path.is_dir():
            raise KustomizeError(f"{kfile}: component {entry!r} is not a directory")
        objects = _build(path, objects)
    for patch in k.get("patches", []):
        unknown = set(patch) - {"path"}
        if unknown:
            raise NotImplementedError(f"{kfile}: patch fields {unknown} not supported")
        for doc in load_documents(directory / patch["path"]):
            _apply_patch(objects, doc, kfile)
    if "namespace" in k:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = k["namespace"]
    for spec in k.get("labels", []):
        _apply_labels(objects, spec, kfile)
    for image in k.get("images", []):
        _apply_image(objects, image, kfile)
    return objects


def object_id(obj: dict) -> tuple[str, str, str, str]:
    group = obj.get("apiVersion", "").rpartition("/")[0]
    return group, obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def _check_unique(objects: list[dict], where: Path) -> None:
    seen = set()
    for obj in objects:
        oid = object_id(obj)
        if oid in seen:
            raise KustomizeError(f"{where}: {oid} defined twice")
        seen.add(oid)


def _apply_patch(objects: list[dict], patch: dict, where: Path) -> None:
    group, kind, _, name = object_id(patch)
    targets = [
        o for o in objects if object_id(o)[:2] == (group, kind) and o["metadata"]["name"] == name
    ]
    if len(targets) != 1:
        raise KustomizeError(f"{where}: patch for {kind}/{name} matches {len(targets)} objects")
    merged = strategic_merge(targets[0], patch)
    targets[0].clear()
    targets[0].update(merged)


def strategic_merge(base: Any, patch: Any, field: str | None = None) -> Any:
    """Strategic merge of `patch` into `base` (returns a new value)."""
    if isinstance(patch, dict):
        if any(isinstance(key, str) and key.startswith("$") for key in patch):
            raise NotImplementedError(f"patch directives {list(patch)} are not supported")
        if not isinstance(base, dict):
            return {k: v for k, v in copy.deepcopy(patch).items() if v is not None}
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value, key)
            else:
                out[key] = strategic_merge(None, value, key)
        return out
    if isinstance(patch, list):
        key = _merge_key(field, patch, base)
        if key is None or not isinstance(base, list):
            return copy.deepcopy(patch)
        out = copy.deepcopy(base)
        for item in patch:
            match = [
                i for i, b in enumerate(out) if isinstance(b, dict) and b.get(key) == item[key]
            ]
            if match:
                out[match[0]] = strategic_merge(out[match[0]], item, None)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def _merge_key(field: str | None, patch: list, base: Any) -> str | None:
    if field == "ports":
        # Container ports merge on containerPort, Service ports on port.
        sample = (patch or base or [{}])[0]
        key = "containerPort" if "containerPort" in sample else "port"
    else:
        key = MERGE_KEYS.get(field or "")
    if key is None:
        return None
    if not all(isinstance(i, dict) and key in i for i in patch):
        raise KustomizeError(f"list {field!r}: every patch item needs its merge key {key!r}")
    return key


def _apply_labels(objects: list[dict], spec: dict, where: Path) -> None:
    unknown = set(spec) - {"pairs", "includeSelectors", "includeTemplates"}
    if unknown:
        raise NotImplementedError(f"{where}: labels fields {unknown} not supported")
    if spec.get("includeSelectors", False):
        raise NotImplementedError(f"{where}: labels with includeSelectors are not supported")
    pairs = spec["pairs"]
    for obj in objects:
        obj["metadata"].setdefault("labels", {}).update(pairs)
        if not spec.get("includeTemplates", False):
            continue
        if obj["kind"] in POD_TEMPLATE_KINDS:
            tmeta = obj["spec"]["template"].setdefault("metadata", {})
            tmeta.setdefault("labels", {}).update(pairs)
        if obj["kind"] == "CronJob":
            raise NotImplementedError("CronJob templates are not supported")
        if obj["kind"] == "StatefulSet":
            for vct in obj["spec"].get("volumeClaimTemplates", []):
                vct.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of an image reference."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = None
    if ":" in last:
        name, _, tag = name.rpartition(":")
    return name, tag, digest or None


def containers_of(obj: dict) -> list[dict]:
    """Every container and init container anywhere in `obj` (pod templates, CRD replica specs)."""
    found: list[dict] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    found.extend(c for c in value if isinstance(c, dict))
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(obj)
    return found


def _apply_image(objects: list[dict], spec: dict, where: Path) -> None:
    unknown = set(spec) - {"name", "newName", "newTag", "digest"}
    if unknown:
        raise NotImplementedError(f"{where}: images fields {unknown} not supported")
    for obj in objects:
        for container in containers_of(obj):
            name, tag, digest = split_image(container.get("image", ""))
            if name != spec["name"]:
                continue
            name = spec.get("newName", name)
            if "digest" in spec:
                container["image"] = f"{name}@{spec['digest']}"
                continue
            tag = spec.get("newTag", tag)
            container["image"] = (
                name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
            )
