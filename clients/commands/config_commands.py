"""`init_config` (a config from a data set and a target column, by Ludwig's type inference) and
`render_config` (a config with every default filled in, as a job records it)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from clients.commands.parsing import flag
from tunewire.errors import InvalidArgument

if TYPE_CHECKING:  # pandas is imported where a data set is read, not by every command's parser
    import pandas as pd

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _sequential_integers(values: list[str]) -> bool:
    try:
        ints = sorted({int(float(v)) for v in values})
    except ValueError:
        return False
    if any(float(v) != int(float(v)) for v in values):
        return False
    return ints == list(range(ints[0], ints[0] + len(ints)))


def infer_type(column: pd.Series) -> str:
    """Ludwig's automl `infer_type`, for the types tunewire reads: binary for two values and no
    missing ones; category when the distinct values are under half the rows and not all numbers
    (or numbers that count up one by one); number when all are numbers; text otherwise."""
    values = column.astype(str).str.strip()
    missing = values.eq("") | column.isna()
    present = values[~missing]
    distinct = list(dict.fromkeys(present))
    if len(distinct) <= 1:
        return "category"
    if len(distinct) == 2 and not missing.any():
        return "binary"
    all_numbers = all(_is_number(v) for v in distinct)
    if len(distinct) < len(present) * 0.5 and (not all_numbers or _sequential_integers(distinct)):
        return "category"
    if all_numbers:
        return "number"
    return "text"


def build_config(df: pd.DataFrame, targets: list[str], encoder: str) -> dict:
    """Ludwig's auto config: every other column an input feature, ID-like columns (a distinct
    non-text value per row) left out, the targets as outputs."""
    missing = [t for t in targets if t not in df.columns]
    if missing:
        raise InvalidArgument(
            f"target {missing[0]!r} is not a column (columns: {', '.join(map(str, df.columns))})",
            field="target",
        )
    inputs, outputs = [], []
    for name in df.columns:
        kind = infer_type(df[name])
        if name in targets:
            if kind == "text":
                raise InvalidArgument(
                    f"target {name!r} looks like free text; predictive outputs are binary, "
                    "category or number (a generative config names model_type: llm)",
                    field="target",
                )
            outputs.append({"name": str(name), "type": kind})
            continue
        if kind != "text" and df[name].nunique() == len(df) and len(df) > 2:
            continue  # an ID: Ludwig's automl leaves it out
        feature: dict = {"name": str(name), "type": kind}
        if kind == "text":
            feature["encoder"] = {
                "type": "auto_transformer",
                "pretrained_model_name_or_path": encoder,
                "trainable": False,
            }
        inputs.append(feature)
    if not inputs:
        raise InvalidArgument("no input columns besides the target", field="dataset")
    return {"model_type": "ecd", "input_features": inputs, "output_features": outputs}


def _load_frame(path: str, data_format: str | None) -> pd.DataFrame:
    """The data set read as the trainer reads it (same formats, same sniffing)."""
    from clients import hf_data
    from services.trainer.datasets import check_format, guess_format, read_table

    local = hf_data.fetch(path) if hf_data.is_hub_path(path) else Path(path)
    if not local.is_file():
        raise InvalidArgument(f"{path!r} does not exist", field="dataset")
    fmt = check_format(data_format) if data_format else guess_format(local.name)
    return read_table(local, fmt)


def _dump(config: dict, output: str | None) -> None:
    import yaml

    text = yaml.safe_dump(config, sort_keys=False)
    if output:
        Path(output).write_text(text)
        print(f"config written to {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def cmd_init_config(args) -> int:
    from services.trainer.model_types import resolve

    df = _load_frame(args.dataset, args.data_format)
    config = build_config(df, args.target, args.encoder)
    resolve(config)  # what init_config writes, train accepts
    _dump(config, args.output)
    return 0


def cmd_render_config(args) -> int:
    from clients.commands.common import load_config
    from services.trainer.model_types import resolve
    from tunewire.config import to_dict

    _dump(to_dict(resolve(load_config(args))), args.output)
    return 0


def add_parsers(sub) -> None:
    from clients.commands.common import add_config_flags, add_data_format

    p = sub.add_parser(
        "init_config",
        aliases=["init-config"],
        help="write a config for a data set and target column(s), types inferred as Ludwig does",
    )
    p.add_argument("--dataset", required=True, help="a data set file or hf://datasets/...")
    p.add_argument(
        "--target",
        required=True,
        action="append",
        help="the output column (repeat for several)",
    )
    add_data_format(p)
    p.add_argument(
        "--encoder",
        default=DEFAULT_ENCODER,
        help="the frozen encoder for text columns: a Hub id or a local directory",
    )
    p.add_argument("-o", "--output", default=None, help="YAML file to write; default: stdout")
    p.set_defaults(func=cmd_init_config)

    p = sub.add_parser(
        "render_config",
        aliases=["render-config"],
        help="print a config with every default filled in, as a job records it",
    )
    add_config_flags(p)
    p.add_argument(
        "-rs",
        *flag("--random_seed"),
        dest="random_seed",
        type=int,
        default=None,
        help="seed to write into the config (default: the config's, else 42)",
    )
    p.add_argument("-o", "--output", default=None, help="YAML file to write; default: stdout")
    p.set_defaults(func=cmd_render_config)
