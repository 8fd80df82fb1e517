"""Where an ecd (or llm) config says nothing, Ludwig 0.17's default holds, or the difference is
recorded (`differences_from_ludwig`: tunewire.json, the first event, docs/ludwig.md)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from tunewire.config import to_dict
from tunewire.config.ecd import EcdConfig, differences_from_ludwig, parse_ecd
from tunewire.config.llm import differences_from_ludwig as llm_differences
from tunewire.config.llm import parse_llm
from tunewire.config.schema import from_dict
from tunewire.features import encode_input, fit_input
from tunewire.heads import MLPHead

TEXT = {"name": "t", "type": "text", "encoder": {"pretrained_model_name_or_path": "m"}}
NUM = {"name": "n", "type": "number"}
CAT = {"name": "c", "type": "category"}


def _ecd(inputs: list[dict], **extra) -> dict:
    return {"input_features": inputs, "output_features": [{"name": "y", "type": "binary"}], **extra}


def test_three_inputs_without_combiner_record_ludwigs_ft_transformer() -> None:
    cfg = parse_ecd(_ecd([NUM, CAT, {"name": "m", "type": "number"}]))
    assert cfg.combiner.type == "concat"
    assert any(d.startswith("combiner: concat") for d in differences_from_ludwig(cfg))
    # Two inputs (Ludwig: concat) or a combiner the user chose: nothing to record.
    for raw in (_ecd([NUM, CAT]), _ecd([NUM, CAT, dict(NUM, name="m")], combiner={})):
        assert not any(d.startswith("combiner") for d in differences_from_ludwig(parse_ecd(raw)))


def test_default_pooling_differs_from_auto_transformers_sum_and_is_recorded() -> None:
    cfg = parse_ecd(_ecd([TEXT]))
    assert cfg.input_features[0].encoder.reduce_output == "mean"
    assert any("reduce_output" in d and "sum" in d for d in differences_from_ludwig(cfg))
    chosen = dict(TEXT, encoder={**TEXT["encoder"], "reduce_output": "mean"})
    assert differences_from_ludwig(parse_ecd(_ecd([chosen]))) == []


def test_number_output_normalised_by_default_is_recorded() -> None:
    raw = _ecd([NUM])
    raw["output_features"] = [{"name": "y", "type": "number"}]
    assert any("normalization: zscore" in d for d in differences_from_ludwig(parse_ecd(raw)))
    raw["output_features"][0]["preprocessing"] = {"normalization": "minmax"}
    assert differences_from_ludwig(parse_ecd(raw)) == []


def test_number_output_explicit_null_is_ludwigs_and_survives_the_resolved_config() -> None:
    """Ludwig's null (the target as is) is kept, not defaulted to zscore; the resolved config
    carries each choice (null, or unset resolved to zscore) through parse and from_dict alike."""
    raw = _ecd([NUM])
    for pre, want in (({"normalization": None}, None), ({}, "zscore")):
        raw["output_features"] = [{"name": "y", "type": "number", "preprocessing": pre}]
        resolved = to_dict(parse_ecd(raw))
        assert resolved["output_features"][0]["preprocessing"]["normalization"] == want
        for again in (parse_ecd(resolved), from_dict(EcdConfig, resolved)):
            assert again.output_features[0].preprocessing.normalization == want
            assert differences_from_ludwig(again) == []  # chosen, once resolved
    assert parse_ecd(_ecd([NUM])).output_features[0].preprocessing.normalization is None  # binary


def test_number_input_normalization_null_leaves_the_values_as_is() -> None:
    """Ludwig's number input default is zscore (ours too); an explicit null is honoured."""
    assert parse_ecd(_ecd([NUM])).input_features[0].preprocessing.normalization == "zscore"
    feature = parse_ecd(_ecd([dict(NUM, preprocessing={"normalization": None})])).input_features[0]
    df = pd.DataFrame({"n": [10.0, 20.0, 30.0]})
    meta = fit_input(df, feature, "input_features[0]")
    assert meta.normalization is None
    assert encode_input(df, meta, "input_features[0]").ravel().tolist() == [10.0, 20.0, 30.0]


def test_missing_number_input_reads_as_ludwigs_fill_value_zero() -> None:
    cfg = parse_ecd(_ecd([NUM]))
    feature = cfg.input_features[0]
    assert feature.preprocessing.missing_value_strategy == "fill_with_const"
    meta = fit_input(pd.DataFrame({"n": [10.0, 20.0, None]}), feature, "input_features[0]")
    assert meta.fill == 0.0


def test_missing_text_input_reads_as_unk_as_in_ludwig() -> None:
    assert parse_ecd(_ecd([TEXT])).input_features[0].preprocessing.fill_value == "<UNK>"


def test_head_layers_start_as_ludwigs_xavier_uniform_with_zero_bias() -> None:
    torch.manual_seed(0)
    head = MLPHead(64, 3, [{"output_size": 32, "dropout": 0.0, "activation": "relu"}])
    hidden, out = head.body[0], head.out
    assert torch.all(hidden.bias == 0) and torch.all(out.bias == 0)
    bound = float(np.sqrt(6.0 / (64 + 32)))  # xavier_uniform's; torch's own is 1/sqrt(64)
    assert hidden.weight.abs().max() <= bound
    assert hidden.weight.abs().max() > 1 / np.sqrt(64)


def test_llm_missing_input_dropped_is_recorded_unless_chosen() -> None:
    raw = {
        "model_type": "llm",
        "base_model": "m",
        "input_features": [{"name": "q", "type": "text"}],
        "output_features": [{"name": "a", "type": "text"}],
    }
    assert any("missing_value_strategy: drop_row" in d for d in llm_differences(parse_llm(raw)))
    raw["input_features"][0]["preprocessing"] = {"missing_value_strategy": "drop_row"}
    assert not any("missing_value_strategy" in d for d in llm_differences(parse_llm(raw)))
