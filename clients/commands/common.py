"""What several commands share: the config flags and loading (-c, --config_str, -rs), the data
flags (--dataset and the splits, --data_format) and their checks, the metrics printout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clients.commands.parsing import flag
from tunewire.errors import TunewireError

DEFAULT_SEED = 42
SETS = ("dataset", "training_set", "validation_set", "test_set")


def add_config_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
    group = p.add_mutually_exclusive_group(required=required)
    group.add_argument("-c", "--config", help="YAML or JSON config file (Ludwig's)")
    group.add_argument(
        "-cs",
        *flag("--config_str"),
        dest="config_str",
        help="the config as a JSON or YAML string",
    )


def add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        help="one data set, split by preprocessing.split: a file or hf://datasets/ORG/NAME[/FILE]",
    )
    p.add_argument(*flag("--training_set"), dest="training_set", help="the training split")
    p.add_argument(*flag("--validation_set"), dest="validation_set", help="the validation split")
    p.add_argument(*flag("--test_set"), dest="test_set", help="the test split")
    add_data_format(p)


def add_data_format(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        *flag("--data_format"),
        dest="data_format",
        default=None,
        type=str.lower,
        help="csv, tsv, json (a records array), jsonl, parquet, excel, feather or orc; "
        "default: from the file name's extension",
    )


def load_config(args) -> dict:
    """The config from -c or --config_str, with -rs applied, validated at the edge."""
    import yaml

    from services.trainer.model_types import resolve
    from tunewire.config import ConfigError, load

    if args.config_str is not None:
        try:
            raw = yaml.safe_load(args.config_str)
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot parse --config_str: {exc}", field="config_str") from None
        if not isinstance(raw, dict):
            raise ConfigError("--config_str must be a mapping", field="config_str")
    else:
        raw = load(args.config)
    if getattr(args, "random_seed", None) is not None:
        raw["seed"] = args.random_seed
    resolve(raw)  # before any service starts
    return raw


def check_data(path: str | None, field: str) -> None:
    if not path:
        return
    from clients import hf_data

    if hf_data.is_hub_path(path):
        hf_data.parse(path, field)
    elif not Path(path).is_file():
        raise TunewireError(f"{path!r} does not exist", field=field)


def print_metrics(metrics: dict) -> None:
    for split in ("train", "validation", "test"):
        for feature, values in metrics.get(split, {}).items():
            text = "  ".join(f"{k}={v:.4f}" for k, v in sorted(values.items()))
            print(f"{split:<10} {feature}: {text}", file=sys.stderr)
