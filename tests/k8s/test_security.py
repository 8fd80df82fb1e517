"""Every container that speaks gRPC is wired to the Secret tunewire-auth: the services accept
the tokens listed in it and present their own to their peers, the CLI Job presents its own, and
every path in their arguments or environment is a file of that Secret, mounted read-only."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from tests.k8s.manifests import (
    HEALTH_NAMES,
    JOB_LAYERS,
    SERVICE_LAYERS,
    container_env,
    deployed_with,
    grpc_containers,
    rendered,
)

AUTH_SECRET = "tunewire-auth"
# The key of tunewire-auth that each caller's own token comes from (k8s/README.md's table).
PEER_TOKEN_KEY = {
    "services.embedder": "embedder-token",
    "services.trainer": "trainer-token",
    "services.hub_gateway": "hub-gateway-token",
}
CLIENT_TOKEN_KEY = "client-token"


def _arg(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def secret_file(template: dict, container: dict, path: str) -> tuple[str, str]:
    """(Secret name, key) of the file at `path` in `container`: the mount holding it must be a
    read-only Secret volume whose items put that key exactly there."""
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    mounts = [
        m
        for m in container.get("volumeMounts", [])
        if PurePosixPath(path).is_relative_to(m["mountPath"])
    ]
    assert mounts, f"{path} is on no volume of {container['name']}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    assert mount.get("readOnly") is True, f"{mount['mountPath']} must be read-only"
    secret = volumes[mount["name"]].get("secret")
    assert secret, f"{path}: volume {mount['name']} is not a Secret"
    relative = str(PurePosixPath(path).relative_to(mount["mountPath"]))
    keys = [i["key"] for i in secret.get("items", []) if i["path"] == relative]
    assert len(keys) == 1, f"{path}: no item of Secret {secret['secretName']} is mounted there"
    return secret["secretName"], keys[0]


@pytest.mark.parametrize("name", SERVICE_LAYERS)
def test_every_service_requires_tokens_and_presents_its_own(name):
    found = set()
    for template, c, module in grpc_containers(rendered(name)):
        found.add(module)
        where = f"{name}: {c['name']}"
        args = c["args"]
        tokens = _arg(args, "--auth-tokens-file")
        assert tokens, f"{where}: no --auth-tokens-file (the server would take any call)"
        assert secret_file(template, c, tokens) == (AUTH_SECRET, "tokens"), where
        peer = _arg(args, "--service-token-file")
        if module in PEER_TOKEN_KEY:
            assert peer, f"{where}: calls its peers without a token"
            assert secret_file(template, c, peer) == (AUTH_SECRET, PEER_TOKEN_KEY[module]), where
        else:
            assert peer is None, f"{where}: {module} calls no peer"
        # Tokens are files; none may reach the environment of a server or its children.
        env = c.get("env", [])
        assert not any("secretKeyRef" in v.get("valueFrom", {}) for v in env), where
    assert found == set(HEALTH_NAMES), found


@pytest.mark.parametrize("layer", JOB_LAYERS)
def test_every_grpc_client_job_presents_its_token(layer):
    docs = deployed_with(layer)
    clients = [(t, c) for t, c, what in grpc_containers(rendered(layer)) if what == "cli"]
    if layer == "generative-multinode":
        # torchrun workers talk NCCL and c10d to each other, never to the services.
        assert clients == []
        return
    assert clients, f"{layer}: no CLI container"
    for template, c in clients:
        token_file = container_env(c, docs).get("TUNEWIRE_TOKEN_FILE")
        assert token_file, f"{layer}: {c['name']} sends no token"
        assert secret_file(template, c, token_file) == (AUTH_SECRET, CLIENT_TOKEN_KEY)
        assert "--token" not in c.get("args", []), "a token value on the command line"
        gid = template["spec"]["securityContext"]["runAsGroup"]
        # Secret files are 0440 root:fsGroup: the container's group must be able to read them.
        assert template["spec"]["securityContext"].get("fsGroup") == gid


def test_secret_file_refuses_a_path_no_item_puts_there():
    template = {
        "spec": {
            "volumes": [
                {
                    "name": "auth",
                    "secret": {
                        "secretName": AUTH_SECRET,
                        "items": [{"key": "tokens", "path": "tokens"}],
                    },
                }
            ]
        }
    }
    c = {
        "name": "x",
        "volumeMounts": [{"name": "auth", "mountPath": "/var/run/auth", "readOnly": True}],
    }
    assert secret_file(template, c, "/var/run/auth/tokens") == (AUTH_SECRET, "tokens")
    with pytest.raises(AssertionError, match="no item"):
        secret_file(template, c, "/var/run/auth/token")
    with pytest.raises(AssertionError, match="on no volume"):
        secret_file(template, c, "/etc/tokens")
    c["volumeMounts"][0]["readOnly"] = False
    with pytest.raises(AssertionError, match="read-only"):
        secret_file(template, c, "/var/run/auth/tokens")


def test_the_readmes_tokens_secret_is_in_the_principals_format(tmp_path):
    """k8s/README.md's commands for the Secret write a tokens list the servers load: the
    embedder, the trainer and the gateway as `service` principals (they act for their callers),
    the CLI Job's token as a `train` principal of its own with its Hub namespace, each key's
    token on its own line."""
    import re
    import subprocess

    from tests.k8s.manifests import ROOT
    from tunewire import auth

    text = (ROOT / "k8s" / "README.md").read_text()
    block = re.search(r"```sh\n(for who in embedder trainer.*?)```", text, re.S).group(1)
    script = block[: block.index("kubectl")]  # the files, not the cluster
    # `openssl rand -hex 32` without needing openssl here.
    shim = "openssl() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; }\n"
    script = shim + script
    subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, check=True)
    tokens = auth.parse_tokens((tmp_path / "tokens").read_text(), "tokens")
    for key, role in (
        ("embedder-token", auth.SERVICE),
        ("trainer-token", auth.SERVICE),
        ("hub-gateway-token", auth.SERVICE),
        ("client-token", auth.TRAIN),
    ):
        token = (tmp_path / key).read_text().strip()
        principal = tokens.by_digest[auth.hashlib.sha256(token.encode()).digest()]
        assert principal.role == role and not principal.name.startswith("token-"), key
    assert len({p.name for p in tokens.by_digest.values()}) == 4
