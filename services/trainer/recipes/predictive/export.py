"""Export to a stock `transformers` `*ForSequenceClassification` checkpoint, loadable and usable
without tunewire, where the model is exactly what such a checkpoint computes:

    logits = score(last_hidden_state at the last non-pad token),   score: Linear(hidden, labels,
                                                                          bias=False)

So: one text input through a decoder-only encoder (frozen, or adapted and then merged), `last`
pooling of the final layer without normalisation, no combiner layers, one binary or category
output whose decoder is one linear layer without bias (`decoder.use_bias: false`,
`num_fc_layers: 0`). A fitted temperature is folded into the weights; a binary output becomes two
labels with logits [0, z] (softmax of that is sigmoid(z)). Anything else is not exported, and the
job's log says which condition failed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import structlog
import torch
from torch import nn

from services.trainer.context import JobContext, Log
from tunewire.heads import EncoderRef, PredictiveModel
from tunewire.model_init import building_modules

log = structlog.get_logger(__name__)

EXPORT_DIR = "hf_sequence_classification"


def export_blocker(ctx: JobContext, model: PredictiveModel) -> str | None:
    """Why this model cannot be a stock checkpoint, or None when it can."""
    cfg = ctx.config
    if len(cfg.input_features) != 1 or cfg.input_features[0].type != "text":
        return "it needs exactly one input feature, of type text"
    enc = cfg.input_features[0].encoder
    if enc.pooling != "last" or enc.layer not in (0, -1) or enc.normalize:
        return "it needs reduce_output: last on the final layer, without normalize"
    if cfg.combiner.num_fc_layers or cfg.combiner.fc_layers:
        return "the combiner has fc layers"
    if len(cfg.output_features) != 1 or cfg.output_features[0].type not in ("binary", "category"):
        return "it needs exactly one binary or category output feature"
    out = cfg.output_features[0]
    if out.type == "binary" and out.threshold != 0.5:
        return "a binary threshold other than 0.5 has no place in the checkpoint"
    head = next(iter(model.outputs.values())).head
    if len(head.body) or head.out.bias is not None:
        return (
            "the decoder must be one linear layer without bias "
            "(decoder: {num_fc_layers: 0, use_bias: false})"
        )
    return None


def score_weight(model: PredictiveModel) -> tuple[torch.Tensor, list[str]]:
    """The `score.weight` [labels, hidden] and the label names, temperature folded in."""
    head = next(iter(model.outputs.values()))
    weight = head.head.out.weight.detach().float() / head.temperature
    if head.meta.type == "binary":
        weight = torch.cat([torch.zeros_like(weight), weight])
    return weight, list(head.meta.vocab)


@building_modules()
def export_sequence_classification(
    directory: Path,
    ref: EncoderRef,
    model: PredictiveModel,
    base: Callable[[], nn.Module] | None = None,
) -> Path:
    """Write `directory/hf_sequence_classification/`. `base()` gives the (merged) encoder when
    the trainer holds it; without it the frozen weights load from `ref.spec.model`."""
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    config = AutoConfig.from_pretrained(ref.spec.model)
    tokenizer = AutoTokenizer.from_pretrained(ref.spec.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # the embedder does the same
    tokenizer.padding_side = "right"
    weight, labels = score_weight(model)
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    config.pad_token_id = tokenizer.pad_token_id
    classifier = AutoModelForSequenceClassification.from_config(config)
    if not isinstance(getattr(classifier, "score", None), nn.Linear):
        # BERT-style classifiers pool [CLS] through a pooler: not what the head was trained on.
        raise ValueError(
            f"{type(classifier).__name__} is not a decoder-only classifier that "
            "scores the last token"
        )
    encoder = (
        base()
        if base is not None
        else AutoModel.from_pretrained(ref.spec.model, dtype=torch.float32)
    )
    prefix = classifier.base_model_prefix
    missing, unexpected = getattr(classifier, prefix).load_state_dict(
        encoder.state_dict(), strict=False
    )
    if missing or unexpected:
        raise RuntimeError(
            f"encoder weights do not fit {type(classifier).__name__}: missing "
            f"{missing[:3]}, unexpected {unexpected[:3]}"
        )
    with torch.no_grad():
        classifier.score.weight.copy_(weight.to(classifier.score.weight.dtype))
    out = directory / EXPORT_DIR
    classifier.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def export_if_possible(
    ctx: JobContext,
    model: PredictiveModel,
    encoders: dict[str, EncoderRef],
    directory: Path,
    base: Callable[[], nn.Module] | None = None,
) -> list[str]:
    """Export when the model's shape allows (see the module docstring); `base` as in
    export_sequence_classification. Returns the exported folder, relative, or nothing."""
    exported = _sentence_transformers(ctx, model, encoders, directory)
    reason = export_blocker(ctx, model)
    if reason is None:
        ref = next(iter(encoders.values()))
        try:
            export_sequence_classification(directory, ref, model, base)
        except (OSError, ValueError, KeyError, RuntimeError, AttributeError) as exc:
            # Not every architecture has a *ForSequenceClassification with a `score` layer.
            reason = f"{type(exc).__name__}: {exc}"
        else:
            ctx.emit(Log(f"exported a stock transformers checkpoint to {EXPORT_DIR}/"))
            return [*exported, EXPORT_DIR]
    ctx.emit(Log(f"no stock *ForSequenceClassification export: {reason}"))
    log.info("export skipped", job_id=ctx.job_id, reason=reason)
    return exported


def _sentence_transformers(
    ctx: JobContext, model: PredictiveModel, encoders: dict[str, EncoderRef], directory: Path
) -> list[str]:
    """The sentence-transformers folder (st_export.py) where the model is one."""
    from services.trainer.recipes.predictive import st_export

    reason = st_export.st_blocker(ctx.config, model, encoders)
    if reason is None:
        feature = ctx.config.input_features[0]
        lowercase = bool(getattr(getattr(feature, "preprocessing", None), "lowercase", False))
        try:
            st_export.export_sentence_transformers(
                directory, next(iter(encoders.values())), model, lowercase
            )
        except (ImportError, OSError, ValueError, KeyError, RuntimeError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        else:
            ctx.emit(Log(f"exported a sentence-transformers model to {st_export.EXPORT_DIR}/"))
            return [st_export.EXPORT_DIR]
    ctx.emit(Log(f"no sentence-transformers export: {reason}"))
    return []
