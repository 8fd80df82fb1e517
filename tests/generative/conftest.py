"""A tiny causal LM built once per session (tokenizer trained here, random Llama weights), a
small templated task it can learn in seconds on a CPU, and the helpers the CPU and GPU tests
share (a job through `run_generative_job`, an artifact loaded by stock transformers/peft)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch

from services.trainer.context import JobContext, Progress
from services.trainer.model_types import resolve
from services.trainer.recipes.generative.events import EventWriter
from services.trainer.recipes.generative.launch import run_generative_job
from services.trainer.recipes.generative.recipe import GenerativeRecipe, WorkerJob
from tunewire.config import to_dict

NAMES = [
    "alba",
    "bruno",
    "carla",
    "dario",
    "elena",
    "fabio",
    "gina",
    "hugo",
    "ines",
    "jonas",
    "kira",
    "luca",
    "maya",
    "nico",
    "olga",
    "pablo",
    "rosa",
    "sven",
    "tina",
    "umar",
]
COLORS = ["red", "blue", "green", "black", "white", "amber"]
FRUITS = ["apple", "pear", "plum", "fig", "lime", "kiwi"]


def task_frame() -> pd.DataFrame:
    """name -> "<color> <fruit>": a lookup the model can only get right by training."""
    rng = random.Random(7)
    rows = [{"name": n, "answer": f"{rng.choice(COLORS)} {rng.choice(FRUITS)}"} for n in NAMES[:12]]
    return pd.DataFrame(rows)


def build_tiny_model(out: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = NAMES + COLORS + FRUITS + "what does like ? answer : the person".split()
    # A fixed vocabulary: a trained one orders equally frequent words by hash, which changes
    # from process to process, and with it which random embedding each word gets.
    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "<s>", "</s>", *dict.fromkeys(words)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins word tokens with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
    )
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        # With std-0.02 tied embeddings the logits of a 64-wide model span ~1 nat at most, so a
        # frozen base (LoRA) could never make a peaked prediction; real models have larger norms.
        model.get_input_embeddings().weight.mul_(10.0)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def llm_config(base: Path, **overrides) -> dict:
    cfg = {
        "model_type": "llm",
        "base_model": str(base),
        "input_features": [{"name": "name", "type": "text"}],
        "output_features": [{"name": "answer", "type": "text"}],
        "prompt": {"template": "what does {name} like ? answer :"},
        "trainer": {
            "type": "finetune",
            "epochs": 100,
            "batch_size": 4,
            "learning_rate": 0.003,
            "learning_rate_scheduler": {"decay": "cosine", "warmup_fraction": 0.05},
            "eval_steps": 100,
            "early_stop": -1,
            "steps_per_checkpoint": 1000,
        },
        "generation": {"max_new_tokens": 4, "do_sample": False},
        "backend": {"trainer": {"use_gpu": False}},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


class Recorder:
    def __init__(self) -> None:
        self.events: list = []
        self.lock = threading.Lock()

    def __call__(self, event) -> None:
        with self.lock:
            self.events.append(event)

    def of(self, cls) -> list:
        with self.lock:
            return [e for e in self.events if isinstance(e, cls)]


def worker_recipe(raw: dict, tmp: Path, train: pd.DataFrame, device: str) -> GenerativeRecipe:
    """A job's recipe as its worker builds it (config resolved, training split written under
    `tmp/inputs`), before `setup`: for tests that drive the recipe in this process."""
    cfg = resolve(raw)
    (tmp / "inputs").mkdir(parents=True)
    train.to_parquet(tmp / "inputs" / "train.parquet", index=False)
    job = WorkerJob("j", tmp, tmp / "artifact", 1, cfg, to_dict(cfg))
    return GenerativeRecipe(job, EventWriter(tmp / "events.jsonl", False), torch.device(device))


def job_context(
    tmp: Path, raw: dict, *, train=None, validation=None, test=None, attempt=1, job_id="job-1"
) -> tuple[JobContext, Recorder]:
    cfg = resolve(raw)
    rec = Recorder()
    df = task_frame()
    ctx = JobContext(
        job_id=job_id,
        config=cfg,
        config_dict=to_dict(cfg),
        work_dir=tmp / "work",
        artifact_dir=tmp / "artifact",
        train=df if train is None else train,
        validation=df if validation is None else validation,
        test=test,
        emit=rec,
        attempt=attempt,
    )
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    return ctx, rec


LOAD_AND_GENERATE = r"""
import json, sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
art = Path(sys.argv[1])
if (art / "adapter_config.json").exists():
    from peft import AutoPeftModelForCausalLM
    model = AutoPeftModelForCausalLM.from_pretrained(art)
else:
    model = AutoModelForCausalLM.from_pretrained(art)
tok = AutoTokenizer.from_pretrained(art)
out = []
for prompt in json.loads(sys.argv[2]):
    ids = tok(prompt, return_tensors="pt")
    gen = model.generate(**ids, max_new_tokens=4, do_sample=False)
    out.append(tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
print(json.dumps(out))
"""


def fresh_process_generate(artifact: Path, prompts: list[str]) -> list[str]:
    """Load the artifact with plain transformers/peft in a new interpreter (no tunewire import)."""
    done = subprocess.run(
        [sys.executable, "-c", LOAD_AND_GENERATE, str(artifact), json.dumps(prompts)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def prompts(df) -> list[str]:
    return [f"what does {n} like ? answer :" for n in df["name"]]


def worker_losses(
    tiny_model, tmp_path, *, steps: int, use_gpu: bool, workers: int, strategy: str = "ddp"
) -> list[float]:
    """Per-step losses at a global batch of 4: one worker at batch 4, or two at batch 2 each."""
    trainer = {"epochs": 1, "train_steps": steps, "eval_steps": None, "batch_size": 4 // workers}
    backend = {"use_gpu": use_gpu, "num_workers": workers, "strategy": strategy}
    ctx, rec = job_context(
        tmp_path,
        llm_config(tiny_model, trainer=trainer, backend={"trainer": backend}),
        validation=task_frame().iloc[:0],
    )
    run_generative_job(ctx)
    return [e.loss for e in rec.of(Progress)]
