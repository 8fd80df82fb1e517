"""The domain service: cache hits and misses, dedupe, request order, model LRU."""

import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from services.embedder import service as service_module
from services.embedder.cache import EmbeddingCache
from services.embedder.service import EmbedderService, EncoderRegistry, EncoderSpec
from tests.embedder.conftest import TEXTS
from tunewire.errors import InvalidArgument


def test_second_embed_is_all_hits_without_running_the_model(service, minilm_path):
    spec = EncoderSpec(model=minilm_path)
    first = service.embed(spec, TEXTS)
    assert (first.hits, first.misses) == (0, len(TEXTS))
    computed, batches = service.computed_texts, service.batches
    second = service.embed(spec, TEXTS)
    assert (second.hits, second.misses) == (len(TEXTS), 0)
    assert (service.computed_texts, service.batches) == (computed, batches)
    np.testing.assert_array_equal(second.vectors, first.vectors)
    assert second.fingerprint == first.fingerprint
    stats = service.cache_stats()
    assert stats.entries == len(TEXTS) and stats.hits == len(TEXTS)


def test_hits_survive_a_restart_of_the_service(tmp_path, registry, minilm_path):
    spec = EncoderSpec(model=minilm_path)
    cache = EmbeddingCache(tmp_path / "c.lmdb")
    first = EmbedderService(cache, registry=registry).embed(spec, TEXTS[:3])
    cache.close()
    cache = EmbeddingCache(tmp_path / "c.lmdb")
    try:
        again = EmbedderService(cache, registry=registry)
        result = again.embed(spec, TEXTS[:3])
        assert (result.hits, result.misses, again.computed_texts) == (3, 0, 0)
        np.testing.assert_array_equal(result.vectors, first.vectors)
    finally:
        cache.close()


@pytest.mark.parametrize(
    "change",
    [
        {"pooling": "cls"},
        {"max_length": 8},
        {"normalize": True},
        {"dtype": "float16"},
        {"layer": 2},
        {"instruction": "passage: "},
    ],
)
def test_any_setting_change_is_a_different_key(service, minilm_path, change):
    base = EncoderSpec(model=minilm_path)
    first = service.embed(base, TEXTS[:3])
    changed = service.embed(EncoderSpec(model=minilm_path, **change), TEXTS[:3])
    assert (changed.hits, changed.misses) == (0, 3)
    assert changed.fingerprint != first.fingerprint


def test_equivalent_settings_share_keys(service, minilm_path):
    """layer -1 and 0 are both the last layer; max_length 0 and 512 are MiniLM's own limit."""
    first = service.embed(EncoderSpec(model=minilm_path), TEXTS[:2])
    same = service.embed(EncoderSpec(model=minilm_path, layer=-1, max_length=512), TEXTS[:2])
    assert same.fingerprint == first.fingerprint and same.hits == 2


def test_duplicates_are_computed_once_and_order_is_kept(service, minilm_path):
    texts = ["b", "a", "b", "c", "a", "b"]
    result = service.embed(EncoderSpec(model=minilm_path), texts)
    assert (result.hits, result.misses, service.computed_texts) == (0, 3, 3)
    v = result.vectors
    np.testing.assert_array_equal(v[0], v[2])
    np.testing.assert_array_equal(v[0], v[5])
    np.testing.assert_array_equal(v[1], v[4])
    assert not np.array_equal(v[0], v[1])
    alone = service.embed(EncoderSpec(model=minilm_path), ["c"])
    np.testing.assert_array_equal(alone.vectors[0], v[3])


def test_partial_hits_only_compute_the_new_texts(service, minilm_path):
    spec = EncoderSpec(model=minilm_path)
    service.embed(spec, TEXTS[:4])
    result = service.embed(spec, TEXTS)
    assert (result.hits, result.misses) == (4, len(TEXTS) - 4)
    assert service.computed_texts == len(TEXTS)


def test_token_budget_splits_batches(service, minilm_path):
    service.max_batch_tokens = 32
    service.embed(EncoderSpec(model=minilm_path), TEXTS)
    assert service.batches >= 3  # the longest text alone is ~20 tokens


def test_empty_request_and_output_size_limit(service, minilm_path):
    empty = service.embed(EncoderSpec(model=minilm_path), [])
    assert empty.vectors.shape == (0, 384)
    service.max_output_bytes = 384 * 4 * 2
    with pytest.raises(InvalidArgument) as err:
        service.embed(EncoderSpec(model=minilm_path), TEXTS[:3])
    assert err.value.field == "texts"


def test_bad_spec_values_name_the_field(service, minilm_path):
    for spec, field in [
        (EncoderSpec(model=minilm_path, pooling="median"), "encoder.pooling"),
        (EncoderSpec(model=minilm_path, dtype="int8"), "encoder.dtype"),
        (EncoderSpec(model=minilm_path, max_length=-1), "encoder.max_length"),
    ]:
        with pytest.raises(InvalidArgument) as err:
            service.embed(spec, ["x"])
        assert err.value.field == field


def test_registry_keeps_at_most_n_models(minilm_path, tiny_llama_path, tmp_path):
    copy = tmp_path / "minilm-copy"
    shutil.copytree(minilm_path, copy)
    registry = EncoderRegistry(max_loaded=2)
    registry.get(minilm_path)
    registry.get(tiny_llama_path)
    registry.get(minilm_path)  # now most recent
    registry.get(str(copy))
    assert registry.loaded() == [minilm_path, str(copy)]


def test_local_weights_changed_on_disk_give_a_new_fingerprint(
    tmp_path, minilm_path, cache, monkeypatch
):
    copy = tmp_path / "model"
    shutil.copytree(minilm_path, copy)
    service = EmbedderService(cache)
    first = service.embed(EncoderSpec(model=str(copy)), TEXTS[:2])
    config = copy / "config.json"
    config.write_text(
        config.read_text().replace('"hidden_dropout_prob": 0.1', '"hidden_dropout_prob": 0.2')
    )
    # The files are compared with the disk at most every SIGNATURE_CHECK_SECONDS.
    monkeypatch.setattr(service_module, "SIGNATURE_CHECK_SECONDS", 3600.0)
    assert service.embed(EncoderSpec(model=str(copy)), TEXTS[:2]).fingerprint == first.fingerprint
    monkeypatch.setattr(service_module, "SIGNATURE_CHECK_SECONDS", 0.0)
    second = service.embed(EncoderSpec(model=str(copy)), TEXTS[:2])
    assert second.fingerprint != first.fingerprint and second.misses == 2


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_different_pooling_never_shares_a_forward_pass(service, minilm_path):
    entry = service.registry.get(minilm_path)
    mean, cls = EncoderSpec(model=minilm_path), EncoderSpec(model=minilm_path, pooling="cls")
    with ThreadPoolExecutor(2) as pool:
        with entry.encoder.lock:  # the model is busy: both requests queue up behind it
            futures = [
                pool.submit(service.embed, mean, TEXTS[:3]),
                pool.submit(service.embed, cls, TEXTS[:3]),
            ]
            _wait_for(lambda: entry.queue.pending_rows == 6)
        got_mean, got_cls = (f.result(timeout=60).vectors for f in futures)
    assert service.batches == 2 and service.computed_texts == 6
    np.testing.assert_array_equal(service.embed(mean, TEXTS[:3]).vectors, got_mean)
    assert not np.allclose(got_mean, got_cls)


def test_same_settings_from_two_clients_share_a_forward_pass(tmp_path, registry, minilm_path):
    texts_a, texts_b = ["shared batch one", "shared two"], ["shared three", "shared four!"]
    reference = EmbedderService(EmbeddingCache(tmp_path / "ref.lmdb"), registry=registry)
    alone = reference.embed(EncoderSpec(model=minilm_path), texts_a + texts_b).vectors
    reference.close()
    service = EmbedderService(EmbeddingCache(tmp_path / "c.lmdb"), registry=registry)
    try:
        entry = service.registry.get(minilm_path)
        with ThreadPoolExecutor(2) as pool:
            with entry.encoder.lock:
                futures = [
                    pool.submit(service.embed, EncoderSpec(model=minilm_path), texts)
                    for texts in (texts_a, texts_b)
                ]
                _wait_for(lambda: entry.queue.pending_rows == 4)
            got = np.concatenate([f.result(timeout=60).vectors for f in futures])
        assert service.batches == 1 and service.computed_texts == 4
        np.testing.assert_allclose(got, alone, rtol=1e-5, atol=1e-6)
    finally:
        service.close()


def test_a_replayed_request_is_answered_whole_from_the_cache(service, minilm_path):
    from services.embedder.hot_vectors import HotVectors
    from services.embedder.service import BATCH_ENTRY_MIN_TEXTS

    service.hot_vectors = HotVectors(0)  # text by text from the map (test_hot_vectors.py)
    texts = [f"replayed text number {i}" for i in range(BATCH_ENTRY_MIN_TEXTS)] + ["dup"] * 2
    spec = EncoderSpec(model=minilm_path, dtype="float16")
    first = service.embed(spec, texts)  # computed text by text
    second = service.embed(spec, texts)  # all hits: text by text, and stored whole
    stored = service.cache.stats().entries
    third = service.embed(spec, texts)  # one read
    assert (first.misses, second.hits, third.hits, third.misses) == (65, 65, 65, 0)
    assert stored == 65 + 1 and service.computed_texts == 65
    assert third.vectors.tobytes() == first.vectors.tobytes() == second.vectors.tobytes()
    seen = []  # a caller's render sees the stored answer in the memory map, inside the read
    job = service.begin(spec, texts, lambda r: seen.append(r) or r.vectors.tobytes())
    assert job.finish() == first.vectors.tobytes()
    assert not seen[0].vectors.flags.writeable and (seen[0].hits, seen[0].misses) == (65, 0)
    assert service.embed(spec, texts[:-1]).hits == 65  # another list: text by text again


def test_a_request_of_many_chunks_matches_the_encoder_text_by_text(service, minilm_path):
    """Rows queued chunk by chunk as they are tokenised, batches run between chunks."""
    texts = [f"{i} {text}" for i, text in enumerate(TEXTS * 25)]  # 150 texts: 3 chunks
    service.max_batch_tokens = 256
    result = service.embed(EncoderSpec(model=minilm_path), texts)
    encoder = service.registry.get(minilm_path).encoder
    ids = encoder.tokenize(texts, encoder.max_length)
    expected = np.concatenate(
        [encoder.run([row], pooling="mean", layer=0, normalize=False).numpy() for row in ids]
    )
    assert result.misses == len(texts) and service.batches >= len(texts) * 10 // 256
    np.testing.assert_allclose(result.vectors, expected, rtol=1e-4, atol=1e-5)


def test_a_restarted_service_serves_a_cached_encoder_without_importing_transformers(
    tmp_path, minilm_path
):
    """What opening an encoder's files said is kept in the cache: a new process on that cache
    describes the encoder and answers its cached texts without transformers and without hashing
    the weights again; a text not cached then opens the files and computes the vector the first
    process would have."""
    import json
    import os
    import subprocess
    import sys

    spec = EncoderSpec(model=minilm_path)
    cache = EmbeddingCache(tmp_path / "c.lmdb")
    first = EmbedderService(cache)  # its own registry, keeping shapes in this cache
    info = first.info(spec)
    vectors = first.embed(spec, TEXTS).vectors
    cache.close()
    code = f"""
import json, sys
from services.embedder import fingerprint
from services.embedder.cache import EmbeddingCache
from services.embedder.service import EmbedderService, EncoderSpec
cache = EmbeddingCache({str(tmp_path / "c.lmdb")!r})
service = EmbedderService(cache)
spec = EncoderSpec(model={minilm_path!r})
fingerprint.open = None  # the weights' hashes are known: no file is read to hash it
info = service.info(spec)
result = service.embed(spec, {TEXTS[:-1]!r})
before = "transformers" in sys.modules
missed = service.embed(spec, ["a text no process has embedded yet"])
cache.close()
print(json.dumps({{
    "info": [info.fingerprint, info.dimension, info.model_type, info.max_length],
    "hits": result.hits, "vectors": result.vectors.tolist(), "transformers": before,
    "missed": [missed.misses, missed.vectors.tolist()],
}}))
"""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    second = json.loads(done.stdout.strip().splitlines()[-1])
    assert second["info"] == [info.fingerprint, info.dimension, info.model_type, info.max_length]
    assert second["hits"] == len(TEXTS) - 1 and not second["transformers"]
    np.testing.assert_array_equal(np.array(second["vectors"], np.float32), vectors[:-1])
    reference = EmbedderService(EmbeddingCache(tmp_path / "ref.lmdb"))
    expected = reference.embed(spec, ["a text no process has embedded yet"]).vectors
    assert second["missed"][0] == 1
    np.testing.assert_allclose(np.array(second["missed"][1], np.float32), expected, atol=1e-6)
