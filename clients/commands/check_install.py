"""`check_install`: Ludwig's installation check. Prints the versions and devices, then trains a
tiny predictive model end to end (embedded services, a small random BERT encoder built on the
spot, synthetic data), so a broken install fails here rather than in a user's first job. Nothing
is downloaded."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from clients.commands.parsing import json_text

PACKAGES = ("tunewire", "torch", "transformers", "peft", "grpcio", "huggingface-hub", "pandas")
WORDS = "good great fine nice bad awful poor sad the a film movie was is".split()


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _tiny_encoder(out: Path) -> Path:
    """A 2-layer BERT with a word-level tokenizer over WORDS, saved as a local model folder."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]"
    )
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(cfg).save_pretrained(out)
    fast.save_pretrained(out)
    return out


def _synthetic(path: Path) -> Path:
    import random

    import pandas as pd

    rng = random.Random(0)
    rows = []
    for _ in range(64):
        label = rng.random() < 0.5
        word = rng.choice(WORDS[:4] if label else WORDS[4:8])
        rows.append({"text": f"the film was {word}", "label": str(label).lower()})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def cmd_check_install(args) -> int:
    from clients.embedded import start_embedded
    from clients.sdk import TrainerClient
    from tunewire.devices import default_device
    from tunewire.v1 import trainer_pb2

    versions = _versions()
    for name, ver in versions.items():
        print(f"{name:<16} {ver or 'NOT INSTALLED'}", file=sys.stderr)
    device = str(default_device())
    print(f"{'device':<16} {device}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="tunewire-check-") as tmp:
        root = Path(tmp)
        encoder = _tiny_encoder(root / "encoder")
        data = _synthetic(root / "data.csv")
        config = {
            "input_features": [
                {
                    "name": "text",
                    "type": "text",
                    "encoder": {
                        "type": "auto_transformer",
                        "pretrained_model_name_or_path": str(encoder),
                    },
                }
            ],
            "output_features": [{"name": "label", "type": "binary"}],
            "trainer": {"epochs": 2, "batch_size": 16},
        }
        with start_embedded(root / "state") as services:
            trainer = TrainerClient(services.trainer_address)
            try:
                ds = trainer.upload_dataset(data)
                job = trainer.wait(trainer.create_job(config, dataset_id=ds.id).id)
            finally:
                trainer.close()
    ok = job.state == trainer_pb2.Job.SUCCEEDED
    state = trainer_pb2.Job.State.Name(job.state)
    if ok:
        print("tunewire is installed correctly: a tiny model trained end to end", file=sys.stderr)
    else:
        print(f"error: the check job {state.lower()}: {job.error}", file=sys.stderr)
    if args.json:
        print(json_text({"ok": ok, "versions": versions, "device": device, "job_state": state}))
    return 0 if ok else 1


def add_parser(sub) -> None:
    p = sub.add_parser(
        "check_install",
        aliases=["check-install"],
        help="check the install: versions, devices, and a tiny model trained end to end",
    )
    p.add_argument("--json", action="store_true", help="end stdout with a JSON summary")
    p.set_defaults(func=cmd_check_install)
