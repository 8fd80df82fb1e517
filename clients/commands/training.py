"""`train` and `experiment`: a config and data sets in, a job on the trainer, its artifact and
statistics out in Ludwig's layout (clients/commands/layout.py)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from clients import exit_codes
from clients.commands import layout
from clients.commands.common import (
    DEFAULT_SEED,
    SETS,
    add_config_flags,
    add_data_flags,
    check_data,
    load_config,
    print_metrics,
)
from clients.commands.connection import add_connection, trainer_client
from clients.commands.parsing import flag, json_text
from tunewire.errors import TunewireError


def add_run_flags(p: argparse.ArgumentParser, *, experiment: bool) -> None:
    """Ludwig's run naming, seed and --skip_save_* flags for train and experiment."""
    p.add_argument(
        *flag("--output_directory"),
        dest="output_directory",
        default=None,
        help="where the run goes: <output_directory>/<experiment>_<model>[_N]/ with "
        "--experiment_name/--model_name (output_directory defaults to results then), else "
        "<output_directory>/<job id>/; nothing is downloaded without any of the three",
    )
    p.add_argument(
        *flag("--experiment_name"),
        dest="experiment_name",
        default=None,
        help="experiment name (Ludwig's layout; 'experiment' when only --model_name is given)",
    )
    p.add_argument(
        *flag("--model_name"),
        dest="model_name",
        default=None,
        help="model name (Ludwig's layout; 'run' when only --experiment_name is given)",
    )
    p.add_argument(
        "-rs",
        *flag("--random_seed"),
        dest="random_seed",
        type=int,
        default=None,
        help="seed for splitting, initialisation and shuffling; overrides the config's seed "
        f"(default: the config's seed, else {DEFAULT_SEED})",
    )
    skips = [
        ("model", "the model artifact (model/) in the output directory"),
        ("training_description", "description.json"),
        ("training_statistics", "training_statistics.json"),
        ("log", "the TensorBoard logs (model/logs/)"),
    ]
    if experiment:
        skips += [
            ("predictions", "the test set's predictions.parquet and predictions.csv"),
            ("eval_stats", "test_statistics.json"),
        ]
    for name, what in skips:
        p.add_argument(
            *flag(f"--skip_save_{name}"),
            dest=f"skip_save_{name}",
            action="store_true",
            help=f"do not save {what}",
        )


@dataclass
class TrainOutcome:
    job: object
    summary: dict
    run_dir: Path | None
    ok: bool


def check_inputs(args) -> tuple[dict, dict[str, str | None]]:
    """(config, data sets) checked before any service starts."""
    raw = load_config(args)
    sets = {name: getattr(args, name, None) for name in SETS}
    if not sets["dataset"] and not sets["training_set"]:
        raise TunewireError("give --dataset or --training_set", field="dataset")
    for name, path in sets.items():
        check_data(path, name)
    return raw, sets


def run_training(args, trainer, raw: dict, sets: dict, *, experiment: bool) -> TrainOutcome:
    """Upload the data, run the job to its end with progress, lay the outputs out."""
    from clients.progress import ProgressPrinter
    from clients.sdk import metrics_dict
    from tunewire.v1 import trainer_pb2

    ids = {
        name: trainer.upload_dataset(path, fmt=args.data_format).id
        for name, path in sets.items()
        if path
    }
    job = trainer.create_job(
        raw,
        dataset_id=ids.get("dataset", ""),
        training_set_id=ids.get("training_set", ""),
        validation_set_id=ids.get("validation_set", ""),
        test_set_id=ids.get("test_set", ""),
        request_id=getattr(args, "request_id", None),
        upload_to=getattr(args, "upload_to", None) or "",
    )
    print(f"job {job.id} queued", file=sys.stderr)
    printer = ProgressPrinter(enabled=not getattr(args, "quiet", False))
    try:
        job = trainer.wait(job.id, on_event=printer)
    except KeyboardInterrupt:
        printer.close()
        print(f"\ninterrupted; cancelling job {job.id}", file=sys.stderr)
        trainer.cancel_job(job.id)
        raise
    printer.close()
    ok = job.state == trainer_pb2.Job.SUCCEEDED
    artifact, run_dir = job.artifact_path, None
    named = args.experiment_name or args.model_name
    if ok and named:
        run_dir = layout.experiment_dir(
            args.output_directory or "results",
            args.experiment_name or "experiment",
            args.model_name or "run",
        )
        model_dir = trainer.download_artifact(job.id, run_dir / "model")
        layout.place_run(
            model_dir,
            run_dir,
            keep_model=not args.skip_save_model,
            keep_statistics=not args.skip_save_training_statistics,
            keep_logs=not args.skip_save_log,
        )
        if experiment and args.skip_save_eval_stats:
            (run_dir / "test_statistics.json").unlink(missing_ok=True)
        if not args.skip_save_training_description:
            seed = raw.get("seed", DEFAULT_SEED)
            layout.write_json(
                run_dir / "description.json",
                layout.description(
                    command=sys.argv,
                    config=json.loads(job.config_json),  # as the trainer resolved it
                    datasets={k: str(v) for k, v in sets.items() if v},
                    data_format=args.data_format,
                    random_seed=seed,
                    job_id=job.id,
                ),
            )
        artifact = str((run_dir / "model").resolve()) if not args.skip_save_model else ""
    elif ok and args.output_directory:
        target = Path(args.output_directory) / job.id
        artifact = str(trainer.download_artifact(job.id, target).resolve())
        if args.skip_save_log:
            import shutil

            shutil.rmtree(target / layout.LOGS_DIR, ignore_errors=True)
    state = trainer_pb2.Job.State.Name(job.state)
    summary = {
        "job_id": job.id,
        "state": state,
        "metrics": metrics_dict(job.metrics),
        "artifact": artifact,
    }
    if run_dir is not None:
        summary["output_directory"] = str(run_dir.resolve())
    if job.error:
        summary["error"] = job.error
    if job.upload_id:
        summary["upload_id"] = job.upload_id
    return TrainOutcome(job, summary, run_dir, ok)


def report(outcome: TrainOutcome, as_json: bool) -> int:
    summary = outcome.summary
    print_metrics(summary["metrics"])
    if outcome.ok:
        if summary["artifact"]:
            print(f"artifact: {summary['artifact']}", file=sys.stderr)
        if outcome.run_dir is not None:
            print(f"output directory: {outcome.run_dir}", file=sys.stderr)
    else:
        print(
            f"job {summary['job_id']} {summary['state'].lower()}: {summary.get('error', '')}",
            file=sys.stderr,
        )
    if as_json:
        print(json_text(summary))
    return exit_codes.EXIT_OK if outcome.ok else exit_codes.EXIT_FAILED


def start_plot_worker(args, raw: dict) -> None:
    """For a predictive job run embedded, the trainer's plot worker started now, before the
    services: its interpreter imports matplotlib on the machine's other core while this one
    imports torch, not while the job trains (`plot_worker.py`)."""
    if args.trainer or raw.get("model_type", "ecd") != "ecd":
        return
    from services.trainer.recipes.predictive import plot_worker

    plot_worker.start_idle()


def cmd_train(args) -> int:
    raw, sets = check_inputs(args)
    start_plot_worker(args, raw)
    with trainer_client(args) as trainer:
        outcome = run_training(args, trainer, raw, sets, experiment=False)
    return report(outcome, args.json)


def cmd_experiment(args) -> int:
    """Ludwig's `experiment`: train, then evaluate the model on the test data (the --test_set,
    or the test split of --dataset), writing test_statistics.json and the test predictions."""
    from clients.commands.predicting import write_results

    raw, sets = check_inputs(args)
    start_plot_worker(args, raw)
    with trainer_client(args) as trainer:
        outcome = run_training(args, trainer, raw, sets, experiment=True)
        if outcome.ok:
            data, split = (args.test_set, "full") if args.test_set else (args.dataset, "test")
            ds = trainer.upload_dataset(data, fmt=args.data_format)
            resp = trainer.predict(outcome.job.id, ds.id, evaluate=True, split=split)
            out_dir = outcome.run_dir
            if out_dir is None and args.output_directory:
                out_dir = Path(args.output_directory) / outcome.job.id
            if out_dir is None:
                out_dir = Path(tempfile.mkdtemp(prefix="tunewire-experiment-"))
            written = write_results(
                resp,
                out_dir,
                save_predictions=not args.skip_save_predictions,
                save_statistics=not args.skip_save_eval_stats,
                plots=True,
            )
            outcome.summary["files"] = [str(p) for p in written]
    return report(outcome, args.json)


def add_train_parser(sub, name: str, helptext: str) -> argparse.ArgumentParser:
    experiment = name == "experiment"
    p = sub.add_parser(name, help=helptext, description=helptext)
    add_config_flags(p)
    add_data_flags(p)
    add_run_flags(p, experiment=experiment)
    p.add_argument(
        *flag("--upload_to"),
        dest="upload_to",
        help="upload the artifact to this Hub repo (ORG/NAME) when the job succeeds",
    )
    p.add_argument(
        *flag("--request_id"),
        dest="request_id",
        help="idempotency key: a retried command with the same key reuses the job",
    )
    p.add_argument("--json", action="store_true", help="end stdout with a JSON summary")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    add_connection(p)
    p.set_defaults(func=cmd_experiment if experiment else cmd_train)
    return p
