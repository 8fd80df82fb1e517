"""The generative recipe's own artifacts, uploaded on success through the hub_gateway to a
Hub-compatible server, downloaded with huggingface_hub and loaded with stock transformers/peft in
a fresh process: an adapter-only LoRA artifact and a merged one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.e2e.conftest import HUB_TOKEN
from tests.generative.conftest import build_tiny_model, llm_config, task_frame

LOAD = r"""
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import PeftModel

base, adapter_dir, merged_dir = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(adapter_dir)
ids = tok("what does alba like ? answer :", return_tensors="pt")
lora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter_dir)
merged = AutoModelForCausalLM.from_pretrained(merged_dir)
a = lora.generate(**ids, max_new_tokens=3, do_sample=False)
b = merged.generate(**ids, max_new_tokens=3, do_sample=False)
print("ADAPTER", tok.decode(a[0][ids["input_ids"].shape[1]:]))
print("MERGED", tok.decode(b[0][ids["input_ids"].shape[1]:]))
"""


def test_adapter_and_merged_artifacts_round_trip_through_the_hub(hub, tmp_path):
    from huggingface_hub import snapshot_download

    from clients.embedded import start_embedded
    from clients.sdk import TrainerClient
    from tunewire.v1 import trainer_pb2

    base = build_tiny_model(tmp_path / "tiny-llama")
    data = "\n".join(json.dumps(r) for r in task_frame().to_dict("records")).encode()
    lora = {"type": "lora", "r": 4, "alpha": 8}
    short = {"epochs": 3, "eval_steps": None}
    with start_embedded(tmp_path / "state") as services:
        trainer = TrainerClient(services.trainer_address)
        ds = trainer.upload_dataset(data, "task.jsonl")
        jobs = {}
        for repo, merge in (("acme/tiny-lora", False), ("acme/tiny-merged", True)):
            cfg = llm_config(
                base,
                adapter={**lora, "postprocessor": {"merge_adapter_into_base_model": merge}},
                trainer=short,
            )
            job = trainer.create_job(cfg, training_set_id=ds.id, upload_to=repo)
            jobs[repo] = trainer.wait(job.id)
            assert jobs[repo].state == trainer_pb2.Job.SUCCEEDED, jobs[repo].error
        trainer.close()
    dirs = {
        repo: snapshot_download(
            repo, endpoint=hub.endpoint, token=HUB_TOKEN, cache_dir=tmp_path / "hf-cache"
        )
        for repo in jobs
    }
    adapter_files = set(os.listdir(dirs["acme/tiny-lora"]))
    merged_files = set(os.listdir(dirs["acme/tiny-merged"]))
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= adapter_files
    assert {"config.json", "model.safetensors", "generation_config.json"} <= merged_files
    assert "library_name: peft" in open(os.path.join(dirs["acme/tiny-lora"], "README.md")).read()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", LOAD, str(base), dirs["acme/tiny-lora"], dirs["acme/tiny-merged"]],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ADAPTER" in proc.stdout and "MERGED" in proc.stdout
