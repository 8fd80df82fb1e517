"""The llm configs of Ludwig's examples/ folder (base models swapped for the tiny local one):
each resolves with Ludwig's meaning, or is refused naming the key that is not built."""

from __future__ import annotations

import pytest
import yaml

from services.trainer.model_types import resolve
from tunewire.config import ConfigError

HEAD = "model_type: llm\nbase_model: BASE\n"
FEATURES = """
input_features:
  - name: instruction
    type: text
output_features:
  - name: output
    type: text
"""

RUNS = {
    "llama2_7b_finetuning_4bit": """
quantization: {bits: 4}
adapter: {type: lora}
trainer:
  type: finetune
  learning_rate: 0.0003
  batch_size: 2
  gradient_accumulation_steps: 8
  epochs: 3
  learning_rate_scheduler: {warmup_fraction: 0.01}
backend: {type: local}
""",
    "peft_advanced/pissa_lora": """
adapter: {type: lora, r: 16, alpha: 32, dropout: 0.05, init_lora_weights: pissa, use_rslora: true}
trainer: {type: finetune, learning_rate: 0.0001, epochs: 3, batch_size: 4}
preprocessing: {global_max_sequence_length: 512}
""",
    # Runs on a CUDA GPU with bitsandbytes (tests/generative/test_loftq.py: refused elsewhere).
    "peft_advanced/loftq_lora": """
adapter:
  type: lora
  r: 16
  alpha: 32
  init_lora_weights: loftq
  loftq_config: {loftq_bits: 4, loftq_iter: 1}
trainer: {type: finetune, learning_rate: 0.0001, epochs: 3, batch_size: 4}
""",
    "peft_advanced/oft_llm": """
adapter: {type: oft, oft_block_size: 32, module_dropout: 0.0}
trainer: {type: finetune, learning_rate: 0.0001, epochs: 3}
""",
    "peft_advanced/ln_tuning_llm": """
adapter: {type: ln_tuning}
trainer: {type: finetune, learning_rate: 0.001, epochs: 5, batch_size: 16}
""",
}

REFUSED = {
    "alignment/config_dpo": ("trainer: {type: dpo, dpo_beta: 0.1}", "trainer.type"),
    "peft_advanced/tinylora_llm": ("adapter: {type: tinylora, r: 2}", "adapter.type"),
    # Ludwig refuses loftq without its settings too.
    "peft_advanced/loftq_lora (no loftq_config)": (
        "adapter: {type: lora, init_lora_weights: loftq}",
        "adapter.loftq_config",
    ),
    "llm_structured_output/config_constrained": (
        """
prompt: {task: Classify the sentiment.}
input_features: [{name: text, type: text}]
output_features:
  - {name: sentiment, type: text, decoder: {type: text_parser, regex: "(positive|negative)"}}
generation: {max_new_tokens: 10, temperature: 0.0, do_sample: false}
""",
        "output_features[0].decoder.type",
    ),
}


def config(body: str, base) -> dict:
    raw = yaml.safe_load(HEAD.replace("BASE", str(base)) + body)
    if "input_features" not in raw:
        raw.update(yaml.safe_load(FEATURES))
    return raw


@pytest.mark.parametrize("name", list(RUNS))
def test_example_resolves_with_ludwigs_meaning(name, tiny_model):
    cfg = resolve(config(RUNS[name], tiny_model))
    assert cfg.trainer.type == "finetune" and cfg.adapter is not None
    assert cfg.trainer.gradient_clipping["clipglobalnorm"] == 0.5  # Ludwig's default clipping


@pytest.mark.parametrize("name", list(REFUSED))
def test_example_with_what_is_not_built_is_refused_by_name(name, tiny_model):
    body, field = REFUSED[name]
    with pytest.raises(ConfigError) as info:
        resolve(config(body, tiny_model))
    assert info.value.field == field
