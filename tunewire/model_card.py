"""The README.md model card of an artifact: Hub metadata plus how to load and what it scored.

A pure function of the artifact folder (no network, no clock) so that the trainer can write the card
when it saves an artifact and the hub gateway can render the same card for folders the trainer did
not write (plain PEFT or transformers `save_pretrained` output).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# What the Hub loads the repo root with. A predictive artifact's root (a head on a named encoder)
# is no library's format, so its card names none rather than one the Hub cannot load.
_LIBRARY = {"peft_adapter": "peft", "full_model": "transformers"}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# Files of an artifact that may name the server's paths (a local base model, an encoder).
CONFIG_FILES = (
    "resolved_config.json",
    "adapter_config.json",
    "config.json",
    "tunewire.json",
    "retrieval.json",  # a few-shot model's retrieval encoder
)
LOCAL_PREFIX = "<local>/"  # a local path's stand-in in what reaches the Hub
RETRIEVAL_POOL_FILE = "retrieval_pool.parquet"  # a few-shot model's training rows
_LOCAL_PATH = re.compile(r"^(/|~|\./|\.\./|[A-Za-z]:[\\/])")


def without_local_paths(value: Any) -> Any:
    """`value` with every string that is a local path replaced by `<local>/` and its last
    component: what the Hub shows must not map the server's disk, and a local path means
    nothing to whoever downloads the model."""
    if isinstance(value, str) and _LOCAL_PATH.match(value):
        name = value.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
        return f"{LOCAL_PREFIX}{name}"
    if isinstance(value, dict):
        return {k: without_local_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_local_paths(v) for v in value]
    return value


def _hub_model_id(value: Any) -> str | None:
    """A base model the Hub can link to; local paths (the trainer's cache) are left out because the
    Hub rejects them in `base_model`."""
    if not isinstance(value, str) or not value or value.startswith((".", "/", "~")):
        return None
    return value if _REPO_ID.match(value) else None


def _kind(artifact_dir: Path, meta: dict[str, Any]) -> str:
    if meta.get("kind"):
        return str(meta["kind"])
    if (artifact_dir / "adapter_config.json").is_file():
        return "peft_adapter"
    return "full_model"


def _flatten_metrics(metrics: Any) -> list[tuple[str, str, str, float]]:
    """split→feature→metric→value as sorted rows, skipping values that are not numbers, and
    Ludwig's `combined` loss where one output makes it the same number as that output's."""
    rows = set()
    if isinstance(metrics, dict):
        for split, features in metrics.items():
            features = features or {}
            outputs = [f for f in features if f != "combined"]
            for feature, values in features.items():
                if feature == "combined" and len(outputs) == 1:
                    continue
                for name, value in (values or {}).items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        rows.add((str(split), str(feature), str(name), float(value)))
    return sorted(rows)


def _card_data(
    kind: str,
    base_model: str | None,
    pipeline_tag: str | None,
    tags: list[str],
    datasets: list[str],
    metrics: list[tuple[str, str, str, float]],
    name: str,
):
    """huggingface_hub's ModelCardData: it writes the Hub's metadata keys (model-index from
    EvalResults) and checks their shape."""
    from huggingface_hub import EvalResult, ModelCardData

    dataset_name = datasets[0] if datasets else "training data"
    results = [
        EvalResult(
            task_type=pipeline_tag or "other",
            dataset_type=dataset_name,
            dataset_name=dataset_name,
            dataset_split=split,
            metric_type=metric,
            metric_value=value,
            metric_name=f"{split} {feature} {metric}",
        )
        for split, feature, metric, value in metrics
    ]
    return ModelCardData(
        base_model=base_model,
        library_name=_LIBRARY.get(kind),
        pipeline_tag=pipeline_tag,
        tags=tags,
        datasets=datasets or None,
        model_name=name if results else None,
        eval_results=results or None,
    )


def _load_snippet(kind: str, where: str, task: str | None, st_folder: bool) -> str:
    """How to load it: `where` is the Hub repo id, or "." (this folder) before an upload."""
    if kind == "peft_adapter":
        return (
            "```python\n"
            "from peft import AutoPeftModelForCausalLM\n"
            "from transformers import AutoTokenizer\n\n"
            f"model = AutoPeftModelForCausalLM.from_pretrained({where!r})  # loads its base too\n"
            f"tokenizer = AutoTokenizer.from_pretrained({where!r})\n"
            'inputs = tokenizer("Hello", return_tensors="pt")\n'
            "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=20)[0]))\n"
            "```\n"
        )
    if kind == "full_model":
        auto = (
            "AutoModelForSequenceClassification"
            if task == "text-classification"
            else "AutoModelForCausalLM"
        )
        return (
            "```python\n"
            f"from transformers import {auto}, AutoTokenizer\n\n"
            f"model = {auto}.from_pretrained({where!r})\n"
            f"tokenizer = AutoTokenizer.from_pretrained({where!r})\n"
            "```\n"
        )
    text = (
        "The task head (`head.safetensors`) sits on the pooled hidden states of the encoder\n"
        "named in `tunewire.json`; `training_set_metadata.json` holds the label vocabulary and\n"
        "normalisation. To predict with it, give the folder to tunewire's `predict`.\n"
    )
    if st_folder:
        sub = f"{where}/sentence_transformers" if where != "." else "sentence_transformers"
        text += (
            "\nThe same model as a sentence-transformers pipeline (encoder, pooling, the head's\n"
            "layers): `encode` gives the head's logits, `labels.json` names the classes.\n\n"
            "```python\n"
            "from sentence_transformers import SentenceTransformer\n\n"
            + (
                "from huggingface_hub import snapshot_download\n\n"
                f"path = snapshot_download({where!r}) + '/sentence_transformers'\n"
                if where != "."
                else f"path = {sub!r}\n"
            )
            + "logits = SentenceTransformer(path).encode(['some text'])\n"
            "```\n"
        )
    return text


def _loftq_snippet(where: str, base_model: str | None, quantization: dict[str, Any]) -> str:
    """A LoftQ adapter corrects its 4-bit base's quantization error: it loads on that base,
    quantized as its job quantized it (on the full-precision base it would add the error)."""
    q = {**{"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": False}, **quantization}
    base = base_model or "BASE_MODEL"  # the base named in adapter_config.json
    return (
        "This LoftQ adapter pairs with its base quantized to 4 bits by bitsandbytes exactly as\n"
        "below (a CUDA GPU); on the full-precision base it would add the quantization error\n"
        "it corrects.\n\n"
        "```python\n"
        "import torch\n"
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig\n\n"
        "quantization = BitsAndBytesConfig(\n"
        "    load_in_4bit=True,\n"
        f"    bnb_4bit_quant_type={q['bnb_4bit_quant_type']!r},\n"
        f"    bnb_4bit_use_double_quant={bool(q['bnb_4bit_use_double_quant'])},\n"
        f"    bnb_4bit_compute_dtype=torch.{q.get('bnb_4bit_compute_dtype') or 'bfloat16'},\n"
        ")\n"
        "base = AutoModelForCausalLM.from_pretrained(\n"
        f"    {base!r}, quantization_config=quantization, device_map={{'': 0}}\n"
        ")\n"
        f"model = PeftModel.from_pretrained(base, {where!r})\n"
        f"tokenizer = AutoTokenizer.from_pretrained({where!r})\n"
        "```\n"
    )


def _training_rows_notice(artifact_dir: Path, resolved: dict[str, Any]) -> list[str]:
    """A few-shot model carries the training rows it retrieves examples from: whoever can read
    the repository can read them, so the card says so where a reader looks first."""
    pool = artifact_dir / RETRIEVAL_POOL_FILE
    if not pool.is_file():
        return []
    import pyarrow.parquet as pq

    rows = pq.read_metadata(pool).num_rows
    k = ((resolved.get("prompt") or {}).get("retrieval") or {}).get("k")
    each = f"{k} examples" if k else "examples"
    return [
        "## Training rows in this repository\n\n",
        f"Each prompt carries {each} retrieved from the training data (Ludwig's "
        f"`prompt.retrieval`), so the {rows} training rows it retrieves from are stored here in "
        f"`{RETRIEVAL_POOL_FILE}`: anyone who can read this repository can read them.\n\n",
    ]


def render_model_card(artifact_dir: Path, *, repo_id: str | None = None) -> str:
    """The README.md for `artifact_dir`, as huggingface_hub's ModelCard writes it: metadata
    (base_model, library_name, pipeline_tag, tags, datasets, model-index) from its
    ModelCardData, a loading snippet, metrics and the training config. Without `repo_id` (the
    trainer writing the artifact) the snippet loads from the folder itself; the hub gateway
    renders it again with the repo."""
    artifact_dir = Path(artifact_dir)
    meta = _read_json(artifact_dir / "tunewire.json")
    adapter = _read_json(artifact_dir / "adapter_config.json")
    config = _read_json(artifact_dir / "config.json")
    resolved = _read_json(artifact_dir / "resolved_config.json")
    kind = _kind(artifact_dir, meta)

    base_model = _hub_model_id(
        meta.get("base_model")
        or adapter.get("base_model_name_or_path")
        or resolved.get("base_model")
        or config.get("_name_or_path")
    )
    # What the card shows of the configs: never the server's paths.
    meta, adapter, config, resolved = map(without_local_paths, (meta, adapter, config, resolved))
    task = meta.get("task") or ("text-generation" if kind != "predictive" else None)
    datasets = [str(d) for d in (meta.get("datasets") or []) if d and _hub_model_id(str(d))]
    metrics = _flatten_metrics(meta.get("metrics"))
    tags = ["tunewire", kind.replace("_", "-")]
    if adapter.get("peft_type"):
        tags.append(str(adapter["peft_type"]).lower())
    if config.get("model_type"):
        tags.append(str(config["model_type"]))
    st_folder = (artifact_dir / "sentence_transformers" / "modules.json").is_file()
    if st_folder:
        tags.append("sentence-transformers")
    where = repo_id or "."
    # Not the folder's name: the gateway tells the trainer's own card by rendering it again from
    # a staged copy, and a card must not carry a server's directory names anyway.
    name = repo_id.split("/")[-1] if repo_id else str(meta.get("job_id") or "tunewire-model")

    data = _card_data(kind, base_model, task, tags, datasets, metrics, name)
    what = {
        "peft_adapter": "A PEFT adapter",
        "full_model": "A fine-tuned model",
        "predictive": "A predictive task head",
    }.get(kind, "A model")
    on_base = f" on [{base_model}](https://huggingface.co/{base_model})" if base_model else ""
    job = f" (job `{meta['job_id']}`)" if meta.get("job_id") else ""
    parts = [
        f"# {name}\n\n",
        f"{what}{on_base}, trained with tunewire{job}.\n\n",
        "## How to load it\n\n",
        _loftq_snippet(where, base_model, resolved.get("quantization") or {})
        if kind == "peft_adapter"
        and (resolved.get("adapter") or {}).get("init_lora_weights") == "loftq"
        else _load_snippet(kind, where, task, st_folder),
        "\n",
    ]
    parts += _training_rows_notice(artifact_dir, resolved)
    if metrics:
        parts.append("## Metrics\n\n| split | feature | metric | value |\n|---|---|---|---|\n")
        parts += [f"| {s} | {f} | {m} | {v:.6g} |\n" for s, f, m, v in metrics]
        parts.append("\n")
    if resolved:
        parts += [
            "## Training configuration\n\n```yaml\n",
            yaml.safe_dump(without_local_paths(resolved), sort_keys=False, allow_unicode=True),
            "```\n",
        ]
    elif adapter or config:
        title, shown = (
            ("Adapter configuration", adapter) if adapter else ("Model configuration", config)
        )
        parts += [
            f"## {title}\n\n```json\n",
            json.dumps(without_local_paths(shown), indent=2, sort_keys=True),
            "\n```\n",
        ]
    # `str(ModelCard(card))` gives this text back unchanged (its front matter is
    # ModelCardData's own YAML; tests/hub_gateway/test_model_card.py holds them equal), so the
    # card is written without ModelCard itself: importing it (the Hub client behind it: httpx,
    # file_download, hf_api) was ~0.2 s of a fresh process, on a warm job's critical path.
    return f"---\n{data.to_yaml()}\n---\n\n" + "".join(parts)
