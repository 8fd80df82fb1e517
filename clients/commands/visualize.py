"""`visualize --visualization NAME`: Ludwig's plots from its statistics files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from clients.commands.parsing import flag, json_text
from tunewire.errors import InvalidArgument

# Ludwig's visualization names (and the `_from_test_statistics` spellings) → what they need.
VISUALIZATIONS = {
    "learning_curves": "training_statistics",
    "confusion_matrix": "test_statistics",
    "roc_curves": "test_statistics",
    "roc_curves_from_test_statistics": "test_statistics",
    "precision_recall_curves": "test_statistics",
    "precision_recall_curves_from_test_statistics": "test_statistics",
    "calibration_1_vs_all": "test_statistics",
    "compare_performance": "test_statistics",
}


def evaluation_plots(stats: dict, out_dir: Path) -> list[Path]:
    from tunewire import stat_plots

    return stat_plots.evaluation_plots(stats, out_dir)


def _read(paths: list[str] | None, field: str) -> list[dict]:
    if not paths:
        raise InvalidArgument(f"this visualization needs --{field}", field=field)
    out = []
    for p in paths:
        try:
            out.append(json.loads(Path(p).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidArgument(f"cannot read {p}: {exc}", field=field) from None
    return out


def _features(stats: list[dict], wanted: str | None, key: str | None, field: str) -> list[str]:
    names = [
        f
        for f, v in stats[0].items()
        if isinstance(v, dict) and f != "combined" and (key is None or key in v)
    ]
    if wanted:
        if wanted not in names:
            raise InvalidArgument(
                f"output feature {wanted!r} has no {key or 'statistics'} in the {field} "
                f"(features: {', '.join(names) or 'none'})",
                field="output_feature_name",
            )
        return [wanted]
    if not names:
        raise InvalidArgument(
            f"no output feature in the {field} has {key} (binary features have ROC, "
            "precision-recall and calibration points)",
            field=field,
        )
    return names


def cmd_visualize(args) -> int:
    from tunewire import stat_plots  # numpy and matplotlib: not for every command's start

    name = args.visualization
    out = Path(args.output_directory)
    out.mkdir(parents=True, exist_ok=True)
    ext = args.file_format
    models = args.model_names
    written: list[Path] = []
    if VISUALIZATIONS[name] == "training_statistics":
        stats = _read(args.training_statistics, "training_statistics")
        for i, s in enumerate(stats):
            prefix = f"{models[i]}_" if models and i < len(models) else ""
            written += stat_plots.learning_curves(s, lambda n, p=prefix: out / f"{p}{n}.{ext}")
    else:
        stats = _read(args.test_statistics, "test_statistics")
        names = models or [
            Path(p).parent.name or f"model {i}" for i, p in enumerate(args.test_statistics)
        ]
        key = {
            "confusion_matrix": "confusion_matrix",
            "roc_curves": "roc_curve",
            "roc_curves_from_test_statistics": "roc_curve",
            "precision_recall_curves": "precision_recall_curve",
            "precision_recall_curves_from_test_statistics": "precision_recall_curve",
            "calibration_1_vs_all": "calibration_curve",
            "compare_performance": None,
        }[name]
        labels = None
        if args.ground_truth_metadata:
            labels = json.loads(Path(args.ground_truth_metadata).read_text())
        for feature in _features(stats, args.output_feature_name, key, "test_statistics"):
            path = out / f"{name}_{feature}.{ext}"
            if name == "confusion_matrix":
                for s, model in zip(stats, names):
                    vocab = (labels or {}).get(feature, {}).get("idx2str")
                    p = out / f"confusion_matrix_{model}_{feature}.{ext}"
                    written.append(stat_plots.confusion_matrix(s, feature, p, vocab))
            elif key == "roc_curve":
                written.append(stat_plots.roc_curves(stats, names, feature, path))
            elif key == "precision_recall_curve":
                written.append(stat_plots.precision_recall_curves(stats, names, feature, path))
            elif key == "calibration_curve":
                written.append(stat_plots.calibration(stats, names, feature, path))
            else:
                written.append(stat_plots.compare_performance(stats, names, feature, path))
    for p in written:
        print(p, file=sys.stderr)
    if args.json:
        print(json_text({"files": [str(p) for p in written]}))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "visualize",
        help="plots from training_statistics.json / test_statistics.json (Ludwig's)",
    )
    p.add_argument(
        "-vis",
        "--visualization",
        required=True,
        choices=sorted(VISUALIZATIONS),
        help="the plot to draw",
    )
    p.add_argument(
        "-trs",
        *flag("--training_statistics"),
        dest="training_statistics",
        nargs="+",
        help="training_statistics.json files (one per model)",
    )
    p.add_argument(
        "-tes",
        *flag("--test_statistics"),
        dest="test_statistics",
        nargs="+",
        help="test_statistics.json files (one per model)",
    )
    p.add_argument(
        "-gm",
        *flag("--ground_truth_metadata"),
        dest="ground_truth_metadata",
        help="training_set_metadata.json, for class names ({feature: {idx2str: [...]}})",
    )
    p.add_argument(
        "-f",
        *flag("--output_feature_name"),
        dest="output_feature_name",
        help="the output feature to plot; default: every one that has the data",
    )
    p.add_argument("-m", *flag("--model_names"), dest="model_names", nargs="+", help="legend names")
    p.add_argument(
        "-od",
        *flag("--output_directory"),
        dest="output_directory",
        default="visualizations",
        help="where the plots are written",
    )
    p.add_argument(
        "-ff",
        *flag("--file_format"),
        dest="file_format",
        default="png",
        choices=["png", "pdf", "svg"],
        help="image format",
    )
    p.add_argument("--json", action="store_true", help="end stdout with the files written")
    p.set_defaults(func=cmd_visualize)
