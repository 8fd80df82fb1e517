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
