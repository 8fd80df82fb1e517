"""`--compute-dtype`: bf16 forward passes on a CPU as an opt-in, honoured (the model runs in
bf16), recorded (fingerprint, GetEncoderInfo) and cached apart from float32's vectors, which they
match within a stated cosine; refused, naming the key, where the CPU has no bf16 instructions;
the default unchanged (float32 on a CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.embedder.__main__ import build_parser, main, settings_from_args
from services.embedder.app import Settings
from services.embedder.cache import EmbeddingCache
from services.embedder.service import EmbedderService, EncoderRegistry
from tests.embedder.conftest import TEXTS, served
from tunewire import devices
from tunewire.clients.embedder import EmbedderClient
from tunewire.devices import chosen_compute_dtype, cpu_has_native_bf16
from tunewire.encoder_spec import EncoderSpec
from tunewire.errors import InvalidArgument

CPU = torch.device("cpu")
# bf16 keeps 8 bits of mantissa: MiniLM's mean-pooled vectors stay within this cosine of
# float32's (0.9999 and above measured on SMS texts, bench/results/online_serving_cpu.md).
MIN_COSINE = 0.999

needs_bf16 = pytest.mark.skipif(
    not cpu_has_native_bf16(), reason="this CPU has no bf16 instructions (AVX512-BF16 or AMX)"
)


def test_auto_is_float32_on_a_cpu_and_unknown_names_are_refused():
    assert chosen_compute_dtype(CPU) is torch.float32
    assert chosen_compute_dtype(CPU, "float32") is torch.float32
    with pytest.raises(InvalidArgument) as err:
        chosen_compute_dtype(CPU, "float16")
    assert err.value.field == "compute_dtype"


def test_bf16_refused_where_the_cpu_lacks_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(InvalidArgument, match="no bfloat16 instructions") as err:
        chosen_compute_dtype(CPU, "bfloat16")
    assert err.value.field == "compute_dtype"
    # Before a cache opens or a port binds: the settings themselves are refused...
    with pytest.raises(InvalidArgument, match="no bfloat16"):
        Settings(port=0, data_dir=tmp_path, device="cpu", compute_dtype="bfloat16")
    assert Settings(port=0, data_dir=tmp_path, device="cpu").compute_dtype == "auto"
    # ...and the server's command line answers with a usage error, no traceback.
    with pytest.raises(SystemExit) as exit_:
        main(["--device", "cpu", "--data-dir", str(tmp_path), "--compute-dtype", "bfloat16"])
    assert exit_.value.code == 2
    err_text = capsys.readouterr().err
    assert "compute_dtype" in err_text and "Traceback" not in err_text


def test_flag_and_env(monkeypatch):
    assert settings_from_args(build_parser().parse_args([])).compute_dtype == "auto"
    monkeypatch.setenv("TUNEWIRE_COMPUTE_DTYPE", "float32")
    assert settings_from_args(build_parser().parse_args([])).compute_dtype == "float32"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--compute-dtype", "int8"])


@needs_bf16
def test_bf16_honoured_recorded_cached_apart_close_to_float32(tmp_path, minilm_path, registry):
    spec = EncoderSpec(model=minilm_path, normalize=True)
    bf16 = EncoderRegistry(max_loaded=1, device=CPU, compute_dtype="bfloat16")
    fp32 = registry  # the session's, as every other test's: the default
    cache = EmbeddingCache(tmp_path / "cache" / "embeddings.lmdb")
    try:
        exact = EmbedderService(cache, registry=fp32).embed(spec, TEXTS)
        # One cache for both: the bf16 service computes its own vectors, never serves fp32's.
        with served(tmp_path / "bf16-cache", bf16) as (service, address):
            got = service.embed(spec, TEXTS)
            client = EmbedderClient(address)
            try:
                info = client.info(spec)
            finally:
                client.close()
        shared = EmbedderService(cache, registry=bf16).embed(spec, TEXTS)
    finally:
        cache.close()
    encoder = bf16.get(minilm_path).encoder
    assert encoder._model.dtype == torch.bfloat16 and encoder.dtype == torch.bfloat16
    assert fp32.get(minilm_path).encoder.dtype == torch.float32  # the default, unchanged
    assert info.compute_dtype == "bfloat16" and info.fingerprint == got.fingerprint
    assert got.fingerprint != exact.fingerprint
    assert shared.misses == len(set(TEXTS)) and shared.fingerprint == got.fingerprint
    a, b = np.asarray(exact.vectors, np.float64), np.asarray(got.vectors, np.float64)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= MIN_COSINE, cosine
    assert not np.array_equal(a, b)  # computed in bf16, not fp32 under another name
    np.testing.assert_array_equal(shared.vectors, got.vectors)
