"""The tokens file's principals, the leak of a line written the wrong way round, and how a
handler reads its caller (sync and async alike)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
import structlog
from structlog.testing import capture_logs

from tunewire import auth


@pytest.fixture(autouse=True)
def _fresh_logger(monkeypatch):
    """A logger not yet cached, so capture_logs sees it even after logging was configured."""
    monkeypatch.setattr(auth, "log", structlog.get_logger("tunewire.auth"))


def test_lines_name_principals_and_their_hub_namespaces():
    tokens = auth.parse_tokens(
        "# comment\n"
        "tok-a train alice alice,alice-lab\n"
        "tok-a2 train alice alice,alice-lab  # a rotated token of the same principal\n"
        "tok-b read bob\n"
        "tok-s service trainer\n"
        "tok-r admin root *\n",
        "tokens",
    )
    (alice,) = tokens.by_name["alice"]
    assert alice.role == "train" and alice.namespaces == ("alice", "alice-lab")
    assert tokens.by_name["bob"][0].namespaces == ("bob",)  # default: its own name
    assert alice.may_upload_to("alice-lab") and not alice.may_upload_to("bob")
    assert tokens.by_name["root"][0].may_upload_to("anything")
    assert len(tokens.by_digest) == 5
    assert alice.owns("alice") and not alice.owns("bob") and tokens.by_name["root"][0].owns("bob")


def test_an_old_two_column_line_loads_named_by_a_hash_with_a_warning():
    with capture_logs() as logs:
        tokens = auth.parse_tokens("old-secret-token train\n", "tokens")
    (principal,) = tokens.by_digest.values()
    assert principal.name == f"token-{auth.token_id('old-secret-token')}"
    assert principal.namespaces == (principal.name,)
    assert any("names no principal" in entry["event"] for entry in logs)
    assert "old-secret-token" not in repr(logs)


@pytest.mark.parametrize(
    "text",
    [
        "admin s3cr3t-value\n",  # ROLE TOKEN: the defect, the token in the second field
        "admin s3cr3t-value alice\n",
        "s3cr3t-value root\n",
        "s3cr3t-value train bad/name\n",
        "s3cr3t-value train alice a;b\n",
        "s3cr3t-value train alice alice extra\n",
    ],
)
def test_errors_never_echo_any_field(text):
    with pytest.raises(ValueError) as info:
        auth.parse_tokens(text, "tokens")
    assert "s3cr3t" not in str(info.value) and "tokens:1" in str(info.value)


def test_role_token_order_is_named_and_a_reload_logs_no_token(tmp_path):
    with pytest.raises(ValueError, match="write the token first"):
        auth.parse_tokens("admin s3cr3t-value\n", "tokens")
    path = tmp_path / "tokens"
    path.write_text("good-token read reader\n")
    tokens = auth.TokenFile(path, min_interval_s=0)
    path.write_text("train s3cr3t-value\n")
    time.sleep(0.01)
    with capture_logs() as logs:
        assert tokens.lookup("good-token") is not None  # the broken file keeps the old tokens
    assert any("rejected" in entry["event"] for entry in logs)
    assert "s3cr3t" not in repr(logs)


def test_a_principal_may_hold_tokens_of_several_roles_but_one_set_of_namespaces(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("t1 train alice\nt2 read alice\n")
    tokens = auth.TokenFile(path)
    assert tokens.lookup("t2").name == "alice" and tokens.lookup("t2").role == "read"
    # Acting for alice, a service gets the least role of hers that grants the call.
    assert tokens.principal("alice", "read").role == "read"
    assert tokens.principal("alice", "train").role == "train"
    assert tokens.principal("alice", "admin").role in ("train", "read")  # none grants it
    assert tokens.principal("nobody") is None
    with pytest.raises(ValueError, match="other namespaces"):
        auth.parse_tokens("t1 train alice alice\nt2 read alice org\n", "tokens")
    with pytest.raises(ValueError, match="two principals"):
        auth.parse_tokens("t1 train alice\nt1 train bob\n", "tokens")


ALICE = auth.Principal("alice", "train")


def _handlers():
    def unary(request, context):
        return auth.current_principal().name

    def stream(request, context):
        for _ in range(2):
            yield auth.current_principal().name
            yield auth.acting_for_name()

    async def aunary(request, context):
        await asyncio.sleep(0)
        return auth.current_principal().name

    async def astream(request, context):
        for _ in range(2):
            await asyncio.sleep(0)
            yield auth.current_principal().name

    return unary, stream, aunary, astream


def test_handlers_read_their_caller_sync_and_async():
    unary, stream, aunary, astream = _handlers()
    bind = auth.bind_principal
    u = bind(grpc.unary_unary_rpc_method_handler(unary), ALICE).unary_unary
    s = bind(grpc.unary_stream_rpc_method_handler(stream), ALICE).unary_stream
    assert u(None, None) == "alice"
    # Bound per step, never across a yield: between steps the thread is nobody's.
    names = []
    for name in s(None, None):
        names.append(name)
        assert auth.current_principal() is auth.LOCAL and auth.acting_for_name() == ""
    assert names == ["alice"] * 4
    au = bind(grpc.unary_unary_rpc_method_handler(aunary), ALICE).unary_unary
    ast = bind(grpc.unary_stream_rpc_method_handler(astream), ALICE).unary_stream

    async def run():
        assert await au(None, None) == "alice"
        return [name async for name in ast(None, None)]

    assert asyncio.run(run()) == ["alice", "alice"]
    assert auth.current_principal() is auth.LOCAL


def test_acting_for_overrides_the_caller_for_outgoing_calls():
    with auth.acting_for("bob"):
        assert auth.acting_for_name() == "bob"
    assert auth.acting_for_name() == ""
