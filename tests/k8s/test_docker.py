"""docker/Dockerfile and .dockerignore: the targets the manifests name, pinned bases, a non-root
user, and a build context that holds what `pip install .` and the manifests' commands need.
(No image is built here: there is no Docker daemon to rely on in tests.)"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess

import pytest

from tests.k8s.kustomize import split_image
from tests.k8s.manifests import KUSTOMIZATIONS, ROOT, pod_templates, pytorchjob, rendered, workloads

DOCKERFILE = ROOT / "docker" / "Dockerfile"


def _instructions():
    """(instruction, argument) pairs, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _stages():
    """{stage name: (base, [instructions])}, with global ARG defaults substituted in FROM."""
    args, stages, current = {}, {}, None
    for word, rest in _instructions():
        if word == "ARG" and current is None:
            name, _, default = rest.partition("=")
            args[name] = default
        elif word == "FROM":
            match = re.fullmatch(r"(\S+) AS (\S+)", rest, re.I)
            assert match, f"every stage is named: FROM {rest}"
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], match.group(1))
            current = match.group(2)
            stages[current] = (base, [])
        else:
            stages[current][1].append((word, rest))
    return stages


def _image_variants():
    variants = set()
    docs = [d for name in KUSTOMIZATIONS for d in rendered(name)] + [pytorchjob()]
    for doc in workloads(docs):
        for t in pod_templates(doc):
            for c in t["spec"]["containers"]:
                variants.add(split_image(c["image"])[1].rsplit("-", 1)[1])
    return variants


def test_targets_cover_the_manifests_images():
    stages = _stages()
    assert _image_variants() == {"cpu", "gpu"}
    assert {"cpu", "gpu"} <= set(stages)


def test_bases_are_pinned():
    for name, (base, _) in _stages().items():
        if base in _stages():
            continue  # built on another stage of this file
        image, tag, digest = split_image(base)
        assert digest or (tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag)), (
            f"stage {name}: base {base} is not pinned to an exact version"
        )


def _resolved(stage):
    """The instructions a target runs, through its chain of stages."""
    stages = _stages()
    chain = []
    while stage in stages:
        base, instructions = stages[stage]
        chain = instructions + chain
        stage = base
    return chain


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_target_installs_the_project_and_drops_root(target):
    instructions = _resolved(target)
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the image runs as non-root"
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert f"tunewire-install {target}" in runs
    copies = [rest for word, rest in instructions if word == "COPY"]
    assert ". /app" in copies, "the source tree (clients/cli.py too) is in /app"
    workdir = [rest for word, rest in instructions if word == "WORKDIR"]
    assert workdir[-1] == "/app"
    env = " ".join(rest for word, rest in instructions if word == "ENV")
    # The root filesystem is read-only at run time: no bytecode writes, HOME on the /tmp volume.
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "HOME=/tmp" in env
    # The first `python` on PATH is the venv that install.sh fills.
    assert re.search(r"PATH=/opt/tunewire/bin:\$PATH", env)
    exposed = {int(p) for word, rest in instructions if word == "EXPOSE" for p in rest.split()}
    assert {50051, 50052, 50053} <= exposed


def test_install_script():
    script = ROOT / "docker" / "install.sh"
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    text = script.read_text()
    # torch first from PyTorch's index (CPU or CUDA), then the project itself.
    assert text.index("download.pytorch.org/whl/cpu") < text.index("pip install /app")
    assert "torch==${TORCH_VERSION}" in text
    out = subprocess.run(
        ["sh", str(script), "tpu"],
        capture_output=True,
        text=True,
        env={"TORCH_VERSION": "0", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 2 and "unknown variant" in out.stderr
    if shutil.which("shellcheck"):
        assert subprocess.run(["shellcheck", str(script)]).returncode == 0


def _ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(
            fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, "*/" + pattern.removeprefix("**/"))
            for p in prefixes
        ):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_build_needs():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    needed = [
        "pyproject.toml",
        "docker/install.sh",
        "clients/cli.py",
        "tunewire/clients/addresses.py",
        "tunewire/server.py",
        "tunewire/v1/trainer_pb2.py",
        "services/embedder/__main__.py",
        "services/trainer/__main__.py",
        "services/hub_gateway/__main__.py",
    ]
    for path in needed:
        assert not _ignored(path, patterns), f"{path} is excluded from the build context"
    for path in [
        ".git/config",
        ".venv/bin/python",
        "tests/k8s/test_docker.py",
        "services/__pycache__/x.pyc",
        "k8s/base/embedder.yaml",
    ]:
        assert _ignored(path, patterns), f"{path} would be sent to the Docker daemon"


def test_torch_pinned_as_the_setup_script_does():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    pinned = set(re.findall(r"torch==([0-9][0-9.]*)", setup))
    assert len(pinned) == 1, pinned
    versions = {
        rest.partition("=")[2]
        for word, rest in _instructions()
        if word == "ARG" and rest.startswith("TORCH_VERSION=")
    }
    assert versions == pinned, f"Dockerfile torch {versions}, scripts/setup.sh {pinned}"
