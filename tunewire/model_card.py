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
_LIBRARY = {"peft_adapter": "peft", "full_model": "transformers", "predictive": "tunewire"}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# Files of an artifact that may name the server's paths (a local base model, an encoder).
CONFIG_FILES = ("resolved_config.json", "adapter_config.json", "config.json", "tunewire.json")
_LOCAL_PATH = re.compile(r"^(/|~|\./|\.\./|[A-Za-z]:[\\/])")


def without_local_paths(value: Any) -> Any:
    """`value` with every string that is a local path replaced by `<local>/` and its last
    component: what the Hub shows must not map the server's disk, and a local path means
    nothing to whoever downloads the model."""
    if isinstance(value, str) and _LOCAL_PATH.match(value):
        name = value.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
        return f"<local>/{name}"
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
    """split→feature→metric→value as sorted rows, skipping values that are not numbers."""
    rows = []
    if isinstance(metrics, dict):
        for split, features in metrics.items():
            for feature, values in (features or {}).items():
                for name, value in (values or {}).items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        rows.append((str(split), str(feature), str(name), float(value)))
    return sorted(rows)


def _front_matter(
    kind: str,
    base_model: str | None,
    pipeline_tag: str | None,
    tags: list[str],
    datasets: list[str],
    metrics: list[tuple[str, str, str, float]],
    name: str,
) -> dict[str, Any]:
    front: dict[str, Any] = {}
    if base_model:
        front["base_model"] = base_model
    front["library_name"] = _LIBRARY.get(kind, "tunewire")
    if pipeline_tag:
        front["pipeline_tag"] = pipeline_tag
    front["tags"] = tags
    if datasets:
        front["datasets"] = datasets
    if metrics:
        dataset_name = datasets[0] if datasets else "training data"
        results = []
        for split in sorted({m[0] for m in metrics}):
            results.append(
                {
                    "task": {"type": pipeline_tag or "other"},
                    "dataset": {"type": dataset_name, "name": dataset_name, "split": split},
                    "metrics": [
                        {"type": metric, "value": value, "name": f"{split} {feature} {metric}"}
                        for s, feature, metric, value in metrics
                        if s == split
                    ],
                }
            )
        front["model-index"] = [{"name": name, "results": results}]
    return front


def _load_snippet(kind: str, repo: str, base_model: str | None, task: str | None) -> str:
    if kind == "peft_adapter":
        base = base_model or "<base model>"
        return (
            "```python\n"
            "from peft import PeftModel\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"base = AutoModelForCausalLM.from_pretrained({base!r})\n"
            f"model = PeftModel.from_pretrained(base, {repo!r})\n"
            f"tokenizer = AutoTokenizer.from_pretrained({repo!r})\n"
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
            f"model = {auto}.from_pretrained({repo!r})\n"
            f"tokenizer = AutoTokenizer.from_pretrained({repo!r})\n"
            "```\n"
        )
    return (
        "The task head (`head.safetensors`) sits on the pooled hidden states of the encoder\n"
        "named in `tunewire.json`; `training_set_metadata.json` holds the label vocabulary and\n"
        "normalisation.\n\n"
        "```python\n"
        "from huggingface_hub import snapshot_download\n"
        "from safetensors.torch import load_file\n\n"
        f"path = snapshot_download({repo!r})\n"
        'head = load_file(f"{path}/head.safetensors")  # the task head\'s weights\n'
        "```\n\n"
        "To predict with it, give the downloaded folder to tunewire's `predict`.\n"
    )


def render_model_card(artifact_dir: Path, *, repo_id: str | None = None) -> str:
    """The README.md for `artifact_dir`: YAML front matter (base_model, library_name,
    pipeline_tag, tags, datasets, model-index), a loading snippet, metrics and training config."""
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
    datasets = [str(d) for d in (meta.get("datasets") or []) if d]
    metrics = _flatten_metrics(meta.get("metrics"))
    tags = ["tunewire", kind.replace("_", "-")]
    if adapter.get("peft_type"):
        tags.append(str(adapter["peft_type"]).lower())
    if config.get("model_type"):
        tags.append(str(config["model_type"]))
    repo = repo_id or "<repo_id>"
    name = repo.split("/")[-1]

    front = _front_matter(kind, base_model, task, tags, datasets, metrics, name)
    parts = [
        "---\n",
        yaml.safe_dump(front, sort_keys=False, allow_unicode=True),
        "---\n\n",
        f"# {name}\n\n",
    ]
    what = {
        "peft_adapter": "A PEFT adapter",
        "full_model": "A fine-tuned model",
        "predictive": "A predictive task head",
    }.get(kind, "A model")
    on_base = f" on [{base_model}](https://huggingface.co/{base_model})" if base_model else ""
    job = f" (job `{meta['job_id']}`)" if meta.get("job_id") else ""
    parts.append(f"{what}{on_base}, trained with tunewire{job}.\n\n")
    parts += ["## How to load it\n\n", _load_snippet(kind, repo, base_model, task), "\n"]
    if metrics:
        parts.append("## Metrics\n\n| split | feature | metric | value |\n|---|---|---|---|\n")
        parts += [f"| {s} | {f} | {m} | {v:.6g} |\n" for s, f, m, v in metrics]
        parts.append("\n")
    if resolved:
        parts += [
            "## Training configuration\n\n```yaml\n",
            yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True),
            "```\n",
        ]
    elif adapter or config:
        title, shown = (
            ("Adapter configuration", adapter) if adapter else ("Model configuration", config)
        )
        parts += [
            f"## {title}\n\n```json\n",
            json.dumps(shown, indent=2, sort_keys=True),
            "\n```\n",
        ]
    return "".join(parts)
