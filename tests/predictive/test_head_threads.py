"""A small head on the CPU trains and evaluates on one intra-op thread (loop.head_threads)."""

import torch

from services.trainer.recipes.predictive.loop import SMALL_HEAD_STEP, head_threads


def test_small_heads_on_the_cpu_take_one_thread_others_keep_torchs_count():
    cpu = torch.device("cpu")
    assert head_threads(cpu, 49_409, 64, encoder_per_batch=False) == 1  # the SMS spam head
    assert head_threads(cpu, SMALL_HEAD_STEP // 64 + 1, 64, encoder_per_batch=False) is None
    assert head_threads(cpu, 49_409, 64, encoder_per_batch=True) is None  # an adapted encoder
    assert head_threads(torch.device("cuda"), 49_409, 64, encoder_per_batch=False) is None
