"""The README.md card: Hub front matter, loading snippet, metrics and config; each card as
huggingface_hub's ModelCard writes it (parsed by it and written back, unchanged)."""

from __future__ import annotations

import json

import yaml
from huggingface_hub import ModelCard

from tunewire import model_card


def render_model_card(directory, **kwargs) -> str:
    """The card, checked to be huggingface_hub's ModelCard's own text (the trainer writes it
    without importing ModelCard)."""
    card = model_card.render_model_card(directory, **kwargs)
    assert str(ModelCard(card)) == card
    return card


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_predictive_card_from_tunewire_json(tmp_path):
    (tmp_path / "tunewire.json").write_text(
        json.dumps(
            {
                "kind": "predictive",
                "base_model": "sentence-transformers/all-MiniLM-L6-v2",
                "task": "text-classification",
                "datasets": ["sms_spam"],
                "job_id": "job-123",
                "metrics": {
                    "test": {"label": {"accuracy": 0.975, "loss": 0.08}},
                    "validation": {"label": {"accuracy": 0.96}},
                },
            }
        )
    )
    (tmp_path / "resolved_config.json").write_text(
        json.dumps({"model_type": "ecd", "trainer": {"epochs": 3, "learning_rate": 0.001}})
    )
    card = render_model_card(tmp_path, repo_id="org/spam")
    meta = front_matter(card)
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert "library_name" not in meta  # the Hub loads a predictive head with no library
    assert meta["pipeline_tag"] == "text-classification"
    assert meta["datasets"] == ["sms_spam"]
    results = meta["model-index"][0]["results"]
    assert meta["model-index"][0]["name"] == "spam"
    test = next(r for r in results if r["dataset"]["split"] == "test")
    assert {"type": "accuracy", "value": 0.975, "name": "test label accuracy"} in test["metrics"]
    assert "| test | label | accuracy | 0.975 |" in card
    assert "learning_rate: 0.001" in card and "job-123" in card
    assert "head.safetensors" in card


def test_peft_card_from_adapter_config(tmp_path):
    (tmp_path / "adapter_config.json").write_text(
        json.dumps(
            {
                "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
                "peft_type": "LORA",
                "r": 8,
            }
        )
    )
    card = render_model_card(tmp_path, repo_id="org/lora")
    meta = front_matter(card)
    assert meta["library_name"] == "peft"
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["pipeline_tag"] == "text-generation"
    assert "lora" in meta["tags"] and "model-index" not in meta
    assert "AutoPeftModelForCausalLM.from_pretrained('org/lora')" in card
    assert '"r": 8' in card


def test_local_base_model_paths_stay_out_of_the_metadata(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"_name_or_path": "/mnt/cache/llama", "model_type": "llama"})
    )
    meta = front_matter(render_model_card(tmp_path))
    assert "base_model" not in meta
    assert meta["library_name"] == "transformers" and "llama" in meta["tags"]


def test_no_placeholders_duplicates_or_server_paths(tmp_path):
    """Before an upload the card loads from the folder itself; Ludwig's combined loss (the same
    number as the one output's) is not listed twice; local paths become model names."""
    from huggingface_hub import ModelCard

    (tmp_path / "tunewire.json").write_text(
        json.dumps(
            {
                "kind": "predictive",
                "task": "text-classification",
                "job_id": "job-9",
                "metrics": {"test": {"label": {"loss": 0.1}, "combined": {"loss": 0.1}}},
            }
        )
    )
    encoder = {"pretrained_model_name_or_path": "/srv/models/all-MiniLM-L6-v2"}
    (tmp_path / "resolved_config.json").write_text(
        json.dumps({"input_features": [{"name": "text", "encoder": encoder}]})
    )
    card = render_model_card(tmp_path)
    assert "<" not in card.split("---\n")[1] and "<repo_id>" not in card
    assert "/srv/" not in card and "<local>/all-MiniLM-L6-v2" in card
    assert card.count("| test |") == 1
    parsed = ModelCard(card)
    assert parsed.data.model_name == "job-9" and len(parsed.data.eval_results) == 1


def test_a_few_shot_card_says_it_carries_training_rows(tmp_path):
    import pandas as pd

    pd.DataFrame({"name": ["alba", "bruno", "carla"], "answer": ["x", "y", "z"]}).to_parquet(
        tmp_path / "retrieval_pool.parquet"
    )
    (tmp_path / "resolved_config.json").write_text(
        json.dumps({"model_type": "llm", "prompt": {"retrieval": {"type": "random", "k": 2}}})
    )
    card = render_model_card(tmp_path, repo_id="org/few-shot")
    assert "## Training rows in this repository" in card
    assert "2 examples" in card and "the 3 training rows" in card
    assert "retrieval_pool.parquet" in card
    (tmp_path / "retrieval_pool.parquet").unlink()
    assert "Training rows" not in render_model_card(tmp_path, repo_id="org/few-shot")


def test_a_loftq_adapters_card_loads_it_on_its_4bit_base(tmp_path):
    """Its adapter corrects the 4-bit base's error: the snippet quantizes the base as the job
    did (resolved_config.json), not AutoPeftModel's full-precision base."""
    base = "HuggingFaceTB/SmolLM2-135M-Instruct"
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": base, "peft_type": "LORA", "r": 8})
    )
    quantization = {
        "bits": 4,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": False,
        "bnb_4bit_compute_dtype": "bfloat16",
    }
    adapter = {"type": "lora", "init_lora_weights": "loftq"}
    (tmp_path / "resolved_config.json").write_text(
        json.dumps({"model_type": "llm", "adapter": adapter, "quantization": quantization})
    )
    card = render_model_card(tmp_path, repo_id="org/loftq")
    assert "AutoPeftModelForCausalLM" not in card
    assert "bnb_4bit_use_double_quant=False" in card and "bnb_4bit_quant_type='nf4'" in card
    assert f"from_pretrained(\n    {base!r}, quantization_config=quantization" in card
    assert "PeftModel.from_pretrained(base, 'org/loftq')" in card
    snippet = card.split("```python\n")[1].split("```")[0]
    compile(snippet, "card", "exec")  # the snippet is valid Python
