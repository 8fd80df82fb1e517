"""`predict` and `evaluate` with Ludwig's flags: predictions as parquet and CSV with Ludwig's
column names, test_statistics.json in Ludwig's shape, and `evaluate`'s plots."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from clients.commands import layout
from clients.commands.common import add_data_format, check_data, print_metrics
from clients.commands.connection import add_connection, trainer_client
from clients.commands.parsing import flag, json_text
from tunewire.errors import TunewireError

SPLITS = ("full", "training", "validation", "test")


def _generation(args) -> dict | None:
    value = getattr(args, "generation_config", None)
    if not value:
        return None
    try:
        return json.loads(Path(value).read_text() if Path(value).is_file() else value)
    except (json.JSONDecodeError, OSError) as exc:
        raise TunewireError(
            f"not a JSON object or file: {exc}", field="generation_config"
        ) from None


def _predict(args, evaluate: bool):
    check_data(args.dataset, "dataset")
    generation = _generation(args)
    model = args.model
    if Path(model).exists():
        model = str(Path(model).resolve())
    with trainer_client(args) as trainer:
        ds = trainer.upload_dataset(args.dataset, fmt=args.data_format)
        return trainer.predict(
            model,
            ds.id,
            evaluate=evaluate,
            generation_config=generation,
            split=args.split,
            batch_size=args.batch_size,
        )


def write_results(
    resp,
    out_dir: Path,
    *,
    save_predictions: bool,
    save_statistics: bool = False,
    plots: bool = False,
) -> list[Path]:
    """predictions.{parquet,csv} and, for an evaluation, test_statistics.json and the evaluation
    plots, in `out_dir`."""
    from clients.sdk import predictions_frame

    written: list[Path] = []
    if save_predictions:
        written += layout.write_predictions(predictions_frame(resp), out_dir)
    stats = json.loads(resp.test_statistics_json or "{}")
    if save_statistics and stats:
        written.append(layout.write_json(out_dir / "test_statistics.json", stats))
    if plots and stats:
        from clients.commands.visualize import evaluation_plots

        written += evaluation_plots(stats, out_dir)
    return written


def cmd_predict(args) -> int:
    from clients.sdk import metrics_dict

    resp = _predict(args, evaluate=False)
    out_dir = Path(args.output_directory)
    written = write_results(resp, out_dir, save_predictions=not args.skip_save_predictions)
    if written:
        print(f"{resp.rows} predictions written to {out_dir}", file=sys.stderr)
    if args.json:
        print(
            json_text(
                {
                    "predictions": str(written[-1].resolve()) if written else None,
                    "files": [str(p.resolve()) for p in written],
                    "rows": resp.rows,
                    "metrics": metrics_dict(resp.metrics),
                }
            )
        )
    return 0


def cmd_evaluate(args) -> int:
    from clients.sdk import metrics_dict

    resp = _predict(args, evaluate=True)
    metrics = metrics_dict(resp.metrics)
    print_metrics(metrics)
    written = write_results(
        resp,
        Path(args.output_directory),
        save_predictions=not args.skip_save_predictions,
        save_statistics=not args.skip_save_eval_stats,
        plots=True,
    )
    if args.json:
        print(
            json_text({"rows": resp.rows, "metrics": metrics, "files": [str(p) for p in written]})
        )
    return 0


def add_predict_parsers(sub) -> None:
    for name, func, helptext in (
        ("predict", cmd_predict, "predictions for a data set"),
        ("evaluate", cmd_evaluate, "predictions, metrics, test statistics and plots"),
    ):
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.add_argument(
            "-m",
            *flag("--model_path"),
            "--model",
            dest="model",
            required=True,
            help="a model directory (an artifact, or a run's model/) or a job id",
        )
        p.add_argument(
            "--dataset",
            required=True,
            help="a data set file or hf://datasets/ORG/NAME[/FILE]",
        )
        add_data_format(p)
        p.add_argument(
            "-s",
            "--split",
            default="full",
            choices=SPLITS,
            help="the rows to use: all, or one split as the model's preprocessing.split "
            "(and seed) assigns them",
        )
        p.add_argument(
            "-bs",
            *flag("--batch_size"),
            dest="batch_size",
            type=int,
            default=0,
            help="rows per forward pass; 0: the model's eval_batch_size (8 for generation)",
        )
        p.add_argument(
            *flag("--output_directory"),
            "-od",
            dest="output_directory",
            default="results",
            help="where predictions (and statistics and plots) are written",
        )
        p.add_argument(
            *flag("--skip_save_predictions"),
            dest="skip_save_predictions",
            action="store_true",
            help="do not write predictions.parquet and predictions.csv",
        )
        if name == "evaluate":
            p.add_argument(
                *flag("--skip_save_eval_stats"),
                dest="skip_save_eval_stats",
                action="store_true",
                help="do not write test_statistics.json",
            )
        p.add_argument(
            *flag("--generation_config"),
            dest="generation_config",
            help="generation overrides for a generative model: a JSON object or a JSON file",
        )
        p.add_argument("--json", action="store_true", help="end stdout with a JSON summary")
        add_connection(p)
        p.set_defaults(func=func)
