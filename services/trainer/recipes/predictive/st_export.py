"""Export the default predictive model — one text input through a frozen encoder, mean (or
cls/max) pooling, an MLP head — as a sentence-transformers folder: `Transformer` → `Pooling`
(→ `Normalize`) → one `Dense` per head layer, the last without activation. Any server that loads
sentence-transformers models (TEI, Infinity, a plain `SentenceTransformer(path)`) then computes
the head's logits with `encode`: for a binary output `sigmoid(logit)` is the probability, for a
category output the `argmax` is the class (`labels.json` names them in order). A fitted
temperature is folded into the last layer.

Not exported (the job log says why): several inputs, an adapted encoder, a layer other than the
last, norm layers in the head, number/set/vector outputs (their decoding is tunewire's)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from tunewire.heads import EncoderRef, PredictiveModel
from tunewire.model_init import building_modules

EXPORT_DIR = "sentence_transformers"
_POOLING = {"mean": "mean", "cls": "cls", "max": "max"}
_ACTIVATIONS = {
    nn.ReLU: "torch.nn.modules.activation.ReLU",
    nn.GELU: "torch.nn.modules.activation.GELU",
    nn.Tanh: "torch.nn.modules.activation.Tanh",
    nn.SiLU: "torch.nn.modules.activation.SiLU",
}


def st_blocker(cfg, model: PredictiveModel, refs: dict[str, EncoderRef]) -> str | None:
    """Why this model is no sentence-transformers pipeline, or None when it is one."""
    if len(cfg.input_features) != 1 or cfg.input_features[0].type != "text":
        return "it needs exactly one input feature, of type text"
    ref = next(iter(refs.values()))
    if ref.adapted:
        return "the encoder was adapted (its LoRA weights are tunewire's)"
    if ref.spec.pooling not in _POOLING:
        return f"pooling {ref.spec.pooling!r} has no sentence-transformers Pooling mode here"
    if ref.spec.layer not in (0, -1):
        return "it pools a layer other than the last"
    if len(model.outputs) != 1:
        return "it needs exactly one output feature"
    head = next(iter(model.outputs.values()))
    if head.meta.type not in ("binary", "category"):
        return f"a {head.meta.type} output's decoding is tunewire's"
    layers = [*model.combiner.body, *head.head.body, head.head.out]
    if any(not isinstance(m, (nn.Linear, nn.Dropout, *_ACTIVATIONS)) for m in layers):
        return "the head has norm layers"
    return None


@building_modules()
def _dense_layers(model: PredictiveModel) -> list[tuple[nn.Linear, str]]:
    """(linear, activation class path) for each layer, dropout dropped, temperature folded."""
    head = next(iter(model.outputs.values()))
    pairs: list[tuple[nn.Linear, str]] = []
    for module in [*model.combiner.body, *head.head.body]:
        if isinstance(module, nn.Linear):
            pairs.append((module, "torch.nn.modules.linear.Identity"))
        elif type(module) in _ACTIVATIONS:
            pairs[-1] = (pairs[-1][0], _ACTIVATIONS[type(module)])
    last = nn.Linear(
        head.head.out.in_features, head.head.out.out_features, bias=head.head.out.bias is not None
    )
    with torch.no_grad():
        last.weight.copy_(head.head.out.weight / head.temperature)
        if last.bias is not None:
            last.bias.copy_(head.head.out.bias / head.temperature)
    pairs.append((last, "torch.nn.modules.linear.Identity"))
    return pairs


@building_modules()
def _pipeline(ref: EncoderRef, model: PredictiveModel, lowercase: bool):
    """The SentenceTransformer, built holding the module-building lock: loading the encoder
    swaps torch's initialisers for no-ops while it runs (tunewire/model_init.py), which another
    job building its head at that moment would keep."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models

    transformer = models.Transformer(
        ref.spec.model,
        max_seq_length=ref.spec.max_length or None,
        do_lower_case=lowercase,
        model_kwargs={"revision": ref.spec.revision} if ref.spec.revision else {},
    )
    dim = transformer.get_embedding_dimension()
    modules: list[nn.Module] = [
        transformer,
        models.Pooling(dim, pooling_mode=_POOLING[ref.spec.pooling]),
    ]
    if ref.spec.normalize:
        modules.append(models.Normalize())
    for linear, activation in _dense_layers(model):
        dense = models.Dense(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            activation_function=_load_class(activation)(),
        )
        with torch.no_grad():
            dense.linear.weight.copy_(linear.weight.detach().float())
            if linear.bias is not None:
                dense.linear.bias.copy_(linear.bias.detach().float())
        modules.append(dense)
    return SentenceTransformer(modules=modules, device="cpu")


def export_sentence_transformers(
    directory: Path, ref: EncoderRef, model: PredictiveModel, lowercase: bool = False
) -> Path:
    """Write `directory/sentence_transformers/`."""
    out = directory / EXPORT_DIR
    _pipeline(ref, model, lowercase).save(str(out))
    head = next(iter(model.outputs.values()))
    (out / "labels.json").write_text(
        json.dumps(
            {
                "type": head.meta.type,
                "labels": list(head.meta.vocab),
                "threshold": float(getattr(head.feature, "threshold", 0.5) or 0.5),
                "how": "binary: sigmoid(encode(text)[0]) is P(labels[1]); "
                "category: labels[argmax(encode(text))]",
            },
            indent=2,
        )
    )
    return out


def _load_class(path: str):
    import importlib

    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)
