"""How a CPU runs the embedder's forward passes (cpu_threads.py): small batches on one thread,
larger ones on their share of the cores, and a few passes at once, each giving the vectors a
pass alone gives."""

import threading

import numpy as np
import torch

from services.embedder import cpu_threads
from services.embedder.cpu_threads import PARALLEL_PASSES, SMALL_BATCH_TOKENS, forward_threads
from tests.embedder.conftest import TEXTS
from tunewire.cpu_threads import intra_op_threads


def test_small_batches_run_on_one_thread_larger_ones_on_their_share(monkeypatch):
    monkeypatch.setattr(cpu_threads, "_DEFAULT", 8)
    assert forward_threads(20) == forward_threads(SMALL_BATCH_TOKENS) == 1
    assert forward_threads(SMALL_BATCH_TOKENS + 1) == 8 // PARALLEL_PASSES
    assert forward_threads(SMALL_BATCH_TOKENS + 1, alone=True) == 7  # a core left to Python
    assert forward_threads(20, alone=True) == 1
    monkeypatch.setattr(cpu_threads, "_DEFAULT", 1)
    assert forward_threads(10_000) == forward_threads(10_000, alone=True) == 1


def test_the_count_is_restored_after_the_pass():
    before = torch.get_num_threads()
    with intra_op_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with intra_op_threads(None):  # as it is
        assert torch.get_num_threads() == before


def test_passes_run_at_once_and_give_the_vectors_of_one_pass(service, minilm_path, monkeypatch):
    """Two threads inside the model at once (each holding a pass, neither the model lock); the
    first started alone, the second beside it."""
    from services.embedder import encoder as encoder_module

    alone_flags: list[bool] = []
    counted = encoder_module.forward_threads
    monkeypatch.setattr(
        encoder_module,
        "forward_threads",
        lambda tokens, alone=False: (alone_flags.append(alone), counted(tokens, alone))[1],
    )
    service.preload(minilm_path)
    encoder = service.registry.get(minilm_path).encoder
    assert encoder.passes is not None
    ids = encoder.tokenize(TEXTS, 64)
    alone = encoder.run(ids, pooling="mean", layer=0, normalize=False)
    inside, both_in = threading.Barrier(2, timeout=30), []
    forward = encoder._model.forward

    def meeting_forward(*args, **kwargs):
        both_in.append(inside.wait() is not None)  # returns only when both passes are inside
        return forward(*args, **kwargs)

    encoder._model.forward = meeting_forward
    got: list = [None, None]

    def run(i: int) -> None:
        with encoder.passes:
            got[i] = encoder.run(ids, pooling="mean", layer=0, normalize=False)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    del encoder._model.forward
    assert both_in == [True, True]
    assert alone_flags[0] and sorted(alone_flags[1:]) == [False, True]  # alone, then two at once
    for vectors in got:
        np.testing.assert_allclose(vectors.numpy(), alone.numpy(), rtol=1e-5, atol=1e-6)


def test_the_queue_is_split_over_the_passes_where_a_lone_pass_gets_one_thread(monkeypatch):
    from services.embedder.cpu_threads import MIN_SPLIT_TOKENS, pass_budget, split_passes

    assert pass_budget(20, 16384) == MIN_SPLIT_TOKENS  # one text: one pass
    assert pass_budget(1800, 16384) == 1800 // PARALLEL_PASSES
    assert pass_budget(100_000, 16384) == 16384
    assert not split_passes(20, 16384) and not split_passes(MIN_SPLIT_TOKENS, 16384)
    monkeypatch.setattr(cpu_threads, "_DEFAULT", 2)  # a 2-core host: a lone pass has 1 thread
    assert split_passes(1800, 16384)
    monkeypatch.setattr(cpu_threads, "_DEFAULT", 8)  # a lone large pass has 7: no split
    assert not split_passes(1800, 16384)
    assert split_passes(400, 16384)  # small passes run on one thread whatever the host


def test_one_request_runs_its_passes_at_once_and_gives_the_vectors_of_one_pass(
    service, minilm_path, monkeypatch
):
    """A request of many texts on a host where a lone pass gets one thread: two passes of its
    rows inside the model at once (its own thread and a helper), the same vectors as alone."""
    from services.embedder.service import EncoderSpec

    monkeypatch.setattr(cpu_threads, "_DEFAULT", 2)
    monkeypatch.setattr(cpu_threads, "MIN_SPLIT_TOKENS", 8)
    spec = EncoderSpec(model=minilm_path)
    service.preload(minilm_path)
    encoder = service.registry.get(minilm_path).encoder
    texts = [f"{t} ({i})" for i, t in enumerate(TEXTS * 4)]
    alone = encoder.run(encoder.tokenize(texts, 256), pooling="mean", layer=0, normalize=False)
    inside, lock, passes, met = threading.Barrier(2, timeout=30), threading.Lock(), [], []
    forward = encoder._model.forward

    def meeting_forward(*args, **kwargs):
        with lock:
            passes.append(threading.current_thread().name)
            first_two = len(passes) <= 2
        if first_two:  # returns only when both passes are inside the model
            met.append(inside.wait() is not None)
        return forward(*args, **kwargs)

    encoder._model.forward = meeting_forward
    try:
        got = service.embed(spec, texts)
    finally:
        del encoder._model.forward
    assert met == [True, True] and len(set(passes[:2])) == 2 and service.batches >= 2
    np.testing.assert_allclose(got.vectors, alone.numpy(), rtol=1e-5, atol=1e-6)


def test_a_lone_text_takes_the_padded_path_with_the_packed_vector(service, minilm_path):
    service.preload(minilm_path)
    encoder = service.registry.get(minilm_path).encoder
    assert encoder.packed  # MiniLM runs packed batches
    ids = encoder.tokenize(TEXTS[1:2], 256)
    calls: list[str] = []
    for name in ("_forward_packed", "_forward_padded"):
        method = getattr(encoder, name)
        setattr(
            encoder, name, lambda *a, _m=method, _n=name, **k: (calls.append(_n), _m(*a, **k))[1]
        )
    try:
        one = encoder.run(ids, pooling="mean", layer=0, normalize=False)
        packed = encoder.run(ids, pooling="mean", layer=0, normalize=False, packed=True)
    finally:
        del encoder._forward_packed, encoder._forward_padded
    assert calls == ["_forward_padded", "_forward_packed"]
    np.testing.assert_allclose(one.numpy(), packed.numpy(), rtol=1e-5, atol=1e-6)
