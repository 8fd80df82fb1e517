"""LoftQ (`init_lora_weights: loftq`) off the GPU: Ludwig's keys resolve to the 4-bit base the
adapter is computed against, what is not built is refused naming its key, and a machine without
CUDA and bitsandbytes refuses the job at admission, in the worker and at predict (the GPU half:
tests/generative/test_gpu.py)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from services.trainer.model_types import resolve
from tests.generative.conftest import llm_config
from tunewire.config import ConfigError, to_dict
from tunewire.config.llm import differences_from_ludwig

LOFTQ = {"type": "lora", "r": 16, "alpha": 32, "init_lora_weights": "loftq"}
LUDWIG_EXAMPLE = {**LOFTQ, "loftq_config": {"loftq_bits": 4, "loftq_iter": 1}}
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


def test_ludwigs_example_resolves_to_the_4bit_base_its_adapter_pairs_with(tiny_model):
    cfg = resolve(llm_config(tiny_model, adapter=LUDWIG_EXAMPLE))
    q = cfg.quantization
    assert (q.bits, q.bnb_4bit_quant_type, q.bnb_4bit_use_double_quant) == (4, "nf4", False)
    assert to_dict(cfg)["quantization"]["bits"] == 4  # recorded in resolved_config.json
    assert any("loftq" in d and "quantized" in d for d in differences_from_ludwig(cfg))
    # A quantization block of the user's own is kept as written.
    own = resolve(llm_config(tiny_model, adapter=LUDWIG_EXAMPLE, quantization={"bits": 4}))
    assert own.quantization.bnb_4bit_use_double_quant is True  # Ludwig's default


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"adapter": LOFTQ}, "adapter.loftq_config", "must be set"),
        ({"adapter": {**LOFTQ, "loftq_config": {"loftq_bits": 8}}}, None, "only 4"),
        ({"adapter": {**LOFTQ, "loftq_config": {"loftq_bits": 3}}}, None, "one of 2, 4, 8"),
        ({"adapter": {**LOFTQ, "loftq_config": {"loftq_iter": 2}}}, None, "only 1"),
        ({"adapter": {**LOFTQ, "loftq_config": {"loftq_iter": 0}}}, None, "positive"),
        ({"adapter": {**LUDWIG_EXAMPLE, "use_dora": True}}, "adapter.use_dora", "DoRA"),
        (
            {"adapter": {"type": "lora", "loftq_config": {"loftq_bits": 4}}},
            "adapter.loftq_config",
            "init_lora_weights: loftq",
        ),
        (
            {"adapter": LUDWIG_EXAMPLE, "quantization": {"bits": 8}},
            "quantization.bits",
            "4-bit",
        ),
        (
            {
                "adapter": {
                    **LUDWIG_EXAMPLE,
                    "postprocessor": {"merge_adapter_into_base_model": True},
                }
            },
            "adapter.postprocessor.merge_adapter_into_base_model",
            "twice",
        ),
    ],
)
def test_what_is_not_built_is_refused_naming_the_key(tiny_model, changes, field, words):
    with pytest.raises(ConfigError, match=words) as info:
        resolve(llm_config(tiny_model, **changes))
    key = list((changes["adapter"].get("loftq_config") or {}).keys())
    expected = field or f"adapter.loftq_config.{key[0]}"
    assert info.value.field == expected


@no_cuda
@pytest.mark.parametrize(
    ("use_gpu", "error", "words"),
    [(False, "InvalidArgument", "use_gpu is false"), (True, "FailedPrecondition", "CUDA GPU")],
)
def test_a_trainer_without_cuda_refuses_loftq_at_admission(
    tiny_model, tmp_path, use_gpu, error, words
):
    from services.trainer.admission import Admission, JobInputs
    from services.trainer.datasets import DatasetStore
    from tunewire import errors

    store = DatasetStore(tmp_path / "datasets")
    df = pd.DataFrame({"name": ["ann", "bob"] * 4, "answer": ["tea", "milk"] * 4})
    rec = store.put([df.to_csv(index=False).encode()], "d.csv")
    raw = llm_config(tiny_model, adapter=LUDWIG_EXAMPLE, backend={"trainer": {"use_gpu": use_gpu}})
    with pytest.raises(getattr(errors, error), match=words) as info:
        Admission(store).admit(raw, JobInputs(dataset_id=rec.id))
    assert info.value.field == "adapter.init_lora_weights"


def test_the_worker_without_cuda_refuses_naming_loftq(tiny_model):
    from services.trainer.recipes.generative.errors import PreconditionError
    from services.trainer.recipes.generative.model import load_model

    cfg = resolve(llm_config(tiny_model, adapter=LUDWIG_EXAMPLE))
    with pytest.raises(PreconditionError, match=r"adapter.init_lora_weights: loftq.*CUDA GPU"):
        load_model(cfg, torch.device("cpu"), packed=True, total_steps=1)


def test_predict_on_a_loftq_artifact_needs_its_4bit_base(tiny_model, tmp_path):
    """Its adapter corrects the quantized base's error: loading it on the full-precision base
    would count the error twice, so a machine that cannot quantize refuses."""
    from services.trainer.recipes.generative.predict import load_artifact
    from tunewire.errors import FailedPrecondition

    cfg = resolve(llm_config(tiny_model, adapter=LUDWIG_EXAMPLE))
    (tmp_path / "resolved_config.json").write_text(json.dumps(to_dict(cfg)))
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(tiny_model), "peft_type": "LORA"})
    )
    with pytest.raises(FailedPrecondition, match="LoftQ adapter pairs with the 4-bit base"):
        load_artifact(tmp_path, torch.device("cpu"))
