"""Models loaded in several threads of one process at once (online prediction, the embedder and
training jobs share a server process) leave torch's initialisers working: transformers swaps them
for no-ops during each load, and two unserialised loads left them no-ops for good, so every later
head or adapter started from uninitialised memory (tunewire/model_init.py)."""

from __future__ import annotations

import threading

import torch

from services.embedder.encoder import Encoder
from services.embedder.source import ModelSource
from services.trainer.recipes.generative.predict import load_artifact
from tests.generative.conftest import build_tiny_model

INITIALISERS = ("normal_", "uniform_", "kaiming_uniform_", "zeros_", "trunc_normal_")


def test_loads_in_many_threads_leave_torch_initialisers_in_place(tmp_path):
    model_dir = build_tiny_model(tmp_path / "tiny")
    originals = {name: getattr(torch.nn.init, name) for name in INITIALISERS}
    errors: list[BaseException] = []

    def generative():
        for _ in range(4):
            load_artifact(model_dir, torch.device("cpu"))

    def embedder():
        for _ in range(4):
            Encoder(ModelSource(path=model_dir), torch.device("cpu"))._ensure_model()

    def guarded(fn):
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(fn,)) for fn in [generative, embedder] * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert {name: getattr(torch.nn.init, name) for name in INITIALISERS} == originals
    torch.manual_seed(0)
    assert torch.nn.Linear(64, 64).weight.abs().sum() > 1.0  # initialised, not left empty
