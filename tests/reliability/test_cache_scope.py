"""The embedding cache and principals: shared, a hit tells bob that alice embedded a text (the
known gap, docs/reliability.md); with `--cache-scope principal` each principal hits only what it
embedded itself. A real embedder with tokens over gRPC."""

from __future__ import annotations

import pytest

from services.embedder.__main__ import build_parser
from services.embedder.app import Settings, start
from tunewire.server import ServerSecurity, channel_options
from tunewire.tls import ClientSecurity
from tunewire.v1 import embedder_pb2 as pb
from tunewire.v1 import embedder_pb2_grpc
from tunewire.wire import embed_request

TOKENS = {"alice": "tok-alice-c41e", "bob": "tok-bob-7d09"}
SECRET = "alice's draft: the merger closes on Friday"


@pytest.fixture(params=["shared", "principal"])
def hits_seen_by_bob(request, tmp_path, minilm):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKENS['alice']} embed alice\n{TOKENS['bob']} embed bob\n")
    app = start(
        Settings(
            port=0,
            data_dir=tmp_path / "emb",
            preload=[minilm],
            cache_scope=request.param,
            security=ServerSecurity(auth_tokens_file=tokens),
        )
    )
    channels = []

    def embed(who: str, *texts: str) -> pb.EmbedResponse:
        channel = ClientSecurity(token=TOKENS[who]).channel(
            f"127.0.0.1:{app.port}", channel_options()
        )
        channels.append(channel)
        stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
        return stub.Embed(pb.EmbedRequest(encoder=pb.EncoderSpec(model=minilm), texts=list(texts)))

    def stream(who: str, *texts: str) -> int:
        """Cache hits of one StreamEmbed request of `texts` joined, as the SDK sends them."""
        channel = ClientSecurity(token=TOKENS[who]).channel(
            f"127.0.0.1:{app.port}", channel_options()
        )
        channels.append(channel)
        stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
        request = embed_request(pb.EncoderSpec(model=minilm), list(texts))
        return sum(r.cache_hits for r in stub.StreamEmbed(iter([request])))

    yield request.param, embed, stream
    for channel in channels:
        channel.close()
    app.stop()


def test_a_principal_hits_only_its_own_entries_when_scoped(hits_seen_by_bob):
    scope, embed, stream = hits_seen_by_bob
    assert embed("alice", SECRET).cache_hits == 0
    assert embed("alice", SECRET).cache_hits == 1  # her own entry
    bobs = embed("bob", SECRET)
    alices = embed("alice", SECRET)
    # The same vector either way: the scope changes who shares, never what is computed.
    assert bobs.embeddings.data == alices.embeddings.data
    if scope == "shared":
        assert bobs.cache_hits == 1  # the leak, recorded as a known gap
    else:
        assert bobs.cache_hits == 0  # computed for bob: nothing told about alice
        assert embed("bob", SECRET).cache_hits == 1
    # Whole answers (many texts) are kept per scope too.
    many = [f"{SECRET} #{i}" for i in range(40)]
    embed("alice", *many)
    assert embed("alice", *many).cache_hits == 40
    assert embed("bob", *many).cache_hits == (40 if scope == "shared" else 0)
    # Texts kept by text answer a stream on the server's loop, each principal's its own.
    kept = [f"{SECRET} kept {i}" for i in range(70)]
    assert stream("alice", *kept) == 0
    assert stream("alice", *kept[::-1]) == 70
    assert stream("bob", *kept[::-1]) == (70 if scope == "shared" else 0)


def test_the_flag_and_its_env(monkeypatch):
    assert build_parser().parse_args([]).cache_scope == "shared"
    assert build_parser().parse_args(["--cache-scope", "principal"]).cache_scope == "principal"
    monkeypatch.setenv("TUNEWIRE_CACHE_SCOPE", "principal")
    assert build_parser().parse_args([]).cache_scope == "principal"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--cache-scope", "per-user"])
