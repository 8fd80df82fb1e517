"""How many intra-op threads a CPU forward pass gets (cpu_threads.py)."""

import torch

from services.embedder import cpu_threads
from services.embedder.cpu_threads import SMALL_BATCH_TOKENS, forward_threads
from tunewire.cpu_threads import intra_op_threads


def test_small_batches_run_on_one_thread_larger_ones_leave_a_core(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu_threads, "_DEFAULT", 8)
    assert forward_threads(20) == forward_threads(SMALL_BATCH_TOKENS) == 1
    assert forward_threads(SMALL_BATCH_TOKENS + 1) == 7
    monkeypatch.setattr(cpu_threads, "_DEFAULT", 1)
    assert forward_threads(10_000) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # the operator's count, as given
    monkeypatch.setattr(cpu_threads, "_DEFAULT", 4)
    assert forward_threads(10_000) == 4


def test_the_count_is_restored_after_the_pass():
    before = torch.get_num_threads()
    with intra_op_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with intra_op_threads(None):  # as it is
        assert torch.get_num_threads() == before
