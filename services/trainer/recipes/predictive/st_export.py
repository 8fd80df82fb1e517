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
import os
import shutil
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors.torch import save_file
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


# The encoder's files the export takes as they are: weights, config and tokenizer. Everything
# else in its folder (its own sentence-transformers modules, model card) describes another pipeline.
_ENCODER_FILES = (
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "*.model",
)
_NO_LIMIT = 10**9  # tokenizers without a limit say int(1e30)


def export_sentence_transformers(
    directory: Path, ref: EncoderRef, model: PredictiveModel, lowercase: bool = False
) -> Path:
    """Write `directory/sentence_transformers/`. The encoder's files are linked or copied from its
    folder (the weights byte for byte) and the small sentence-transformers files are written
    here; loading the encoder only to save it again cost half a second per job. An encoder with
    no safetensors weights in a local folder is still loaded and saved."""
    out = directory / EXPORT_DIR
    source = _encoder_folder(ref)
    if source is None or not any(source.glob("*.safetensors")):
        _pipeline(ref, model, lowercase).save(str(out))
    else:
        out.mkdir(parents=True, exist_ok=True)
        _take_encoder_files(source, out, ref, lowercase)
        _write_modules(out, ref, model, _max_seq_length(source, ref), lowercase)
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


def _encoder_folder(ref: EncoderRef) -> Path | None:
    """The encoder's local folder: its path, or its snapshot in the Hugging Face cache (never
    downloaded here: the embedder already fetched it). None when neither is on this machine."""
    local = Path(ref.spec.model)
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                ref.spec.model, revision=ref.spec.revision or None, local_files_only=True
            )
        )
    except Exception:  # noqa: BLE001 - any miss falls back to loading through transformers
        return None


def _take_encoder_files(source: Path, out: Path, ref: EncoderRef, lowercase: bool) -> None:
    """Weights linked (or copied) as they are; the tokenizer given the export's length limit and,
    when the feature lowercases, a Lowercase normalizer, as sentence-transformers saves them."""
    for pattern in _ENCODER_FILES:
        for path in source.glob(pattern):
            if path.suffix == ".safetensors":
                _link_or_copy(path, out / path.name)
            elif path.name == "tokenizer.json" and lowercase:
                _lowercased_tokenizer(path, out / path.name)
            elif path.name != "tokenizer_config.json":
                shutil.copyfile(path, out / path.name)
    config = source / "tokenizer_config.json"
    if config.is_file():
        settings = json.loads(config.read_text())
        limit = _max_seq_length(source, ref)
        if limit:
            settings["model_max_length"] = limit
        (out / config.name).write_text(json.dumps(settings, indent=2))


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link when both sit on one filesystem, else a copy. Sharing the inode with the
    encoder's cache is safe because safetensors files are never rewritten in place: safetensors
    and transformers write a new file and rename it over the old one, and the Hugging Face cache
    downloads to a temporary file the same way, so neither side can change the other's bytes."""
    real = source.resolve()
    if real.is_file() and real.stat().st_dev == target.parent.stat().st_dev:
        try:
            os.link(real, target)
            return
        except OSError:  # a filesystem without hard links, or too many links to one inode
            pass
    shutil.copyfile(real, target)


def _lowercased_tokenizer(source: Path, target: Path) -> None:
    """tokenizer.json with Lowercase first, as sentence-transformers' `do_lower_case` sets it."""
    from tokenizers import Tokenizer
    from tokenizers.normalizers import Lowercase, Sequence

    tokenizer = Tokenizer.from_file(str(source))
    current = tokenizer.normalizer
    steps = list(current) if isinstance(current, Sequence) else [current] if current else []
    if not any(isinstance(step, Lowercase) for step in steps):
        tokenizer.normalizer = Sequence([Lowercase(), *steps])
    tokenizer.save(str(target))


def _max_seq_length(source: Path, ref: EncoderRef) -> int | None:
    """The spec's max_length, or (0) the encoder's own limit: the tokenizer's and the position
    table's, whichever is lower, as the embedder truncates."""
    if ref.spec.max_length:
        return ref.spec.max_length
    limits = []
    for name, key in (("tokenizer_config.json", "model_max_length"), ("config.json", None)):
        path = source / name
        if path.is_file():
            settings = json.loads(path.read_text())
            limits.append(settings.get(key or "max_position_embeddings"))
    limits = [int(n) for n in limits if isinstance(n, (int, float)) and 0 < n < _NO_LIMIT]
    return min(limits) if limits else None


# The classes the folder names, in sentence-transformers 6's layout (pyproject pins >= 6.2), and
# the Transformer's settings for a feature-extraction encoder (its TRANSFORMER_TASK_DEFAULTS).
_TRANSFORMER = "sentence_transformers.base.modules.transformer.Transformer"
_MODULES = {
    "Pooling": "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
    "Normalize": "sentence_transformers.base.modules.normalize.Normalize",
    "Dense": "sentence_transformers.base.modules.dense.Dense",
}
_FEATURE_EXTRACTION = {
    "transformer_task": "feature-extraction",
    "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
    "module_output_name": "token_embeddings",
}
_EMBEDDING = "sentence_embedding"  # the key Pooling, Normalize and Dense read and write


def _write_modules(
    out: Path, ref: EncoderRef, model: PredictiveModel, max_seq_length: int | None, lowercase: bool
) -> None:
    """modules.json and each module's folder, as `SentenceTransformer.save` writes them (the
    modules' `save_config` JSON, Dense's `linear.*` safetensors). Written here without importing
    sentence-transformers: its import (scikit-learn, SciPy, PEFT) took 2-3 s of a warm job."""
    transformer_config = {**_FEATURE_EXTRACTION, "do_lower_case": lowercase}
    if max_seq_length:
        transformer_config["max_seq_length"] = max_seq_length  # TEI reads it here
    (out / "sentence_bert_config.json").write_text(json.dumps(transformer_config, indent=4))
    dim = ref.dimension or json.loads((out / "config.json").read_text())["hidden_size"]
    modules: list[tuple[str, dict, dict[str, torch.Tensor]]] = [
        (
            "Pooling",
            {
                "embedding_dimension": dim,
                "pooling_mode": _POOLING[ref.spec.pooling],
                "include_prompt": True,
            },
            {},
        )
    ]
    if ref.spec.normalize:
        modules.append(
            ("Normalize", {"module_input_name": _EMBEDDING, "module_output_name": _EMBEDDING}, {})
        )
    modules += _dense_modules(model)
    entries = [{"idx": 0, "name": "0", "path": "", "type": _TRANSFORMER}]
    for idx, (kind, config, weights) in enumerate(modules, start=1):
        folder = out / f"{idx}_{kind}"
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text(json.dumps(config, indent=4))
        if weights:
            save_file(weights, str(folder / "model.safetensors"))
        entries.append({"idx": idx, "name": str(idx), "path": folder.name, "type": _MODULES[kind]})
    (out / "modules.json").write_text(json.dumps(entries, indent=2))
    versions = {
        "sentence_transformers": version("sentence-transformers"),
        "transformers": version("transformers"),
        "pytorch": torch.__version__,
    }
    config = {
        "model_type": "SentenceTransformer",
        "__version__": versions,
        "prompts": {"query": "", "document": ""},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    }
    (out / "config_sentence_transformers.json").write_text(
        json.dumps(config, indent=2, sort_keys=True)
    )
    (out / "README.md").write_text(_README.format(model=ref.spec.model))


_README = """---
library_name: sentence-transformers
tags:
- sentence-transformers
- text-classification
---

# A tunewire classifier as a sentence-transformers model

The encoder `{model}` (frozen), pooled, then the classifier head as `Dense` layers: `encode`
returns the head's logits. `labels.json` says how to read them.

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("path/to/sentence_transformers")
logits = model.encode(["some text"])
```
"""


def _dense_modules(model: PredictiveModel) -> list[tuple[str, dict, dict[str, torch.Tensor]]]:
    """One sentence-transformers `Dense` per head layer: its config and its weights."""
    denses = []
    for linear, activation in _dense_layers(model):
        config = {
            "in_features": linear.in_features,
            "out_features": linear.out_features,
            "bias": linear.bias is not None,
            "activation_function": activation,
            "module_input_name": _EMBEDDING,
            "module_output_name": _EMBEDDING,
        }
        weights = {"linear.weight": linear.weight.detach().float().contiguous()}
        if linear.bias is not None:
            weights["linear.bias"] = linear.bias.detach().float().contiguous()
        denses.append(("Dense", config, weights))
    return denses


@building_modules()
def _pipeline(ref: EncoderRef, model: PredictiveModel, lowercase: bool):
    """The whole SentenceTransformer, for an encoder whose files cannot be taken as they are.
    Built holding the module-building lock: loading the encoder swaps torch's initialisers for
    no-ops while it runs (tunewire/model_init.py), which another job building its head at that
    moment would keep."""
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
    for _, config, weights in _dense_modules(model):
        dense = models.Dense(
            config["in_features"],
            config["out_features"],
            bias=config["bias"],
            activation_function=_load_class(config["activation_function"])(),
        )
        dense.linear.load_state_dict({k.removeprefix("linear."): v for k, v in weights.items()})
        modules.append(dense)
    return SentenceTransformer(modules=modules, device="cpu")


def _load_class(path: str):
    import importlib

    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)
