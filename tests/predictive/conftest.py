"""Fixtures for predictive fine-tuning: the embedded services, the offline data sets and the real
MiniLM (the e2e fixtures, reused), and a tiny decoder-only Llama whose tokenizer is trained on the
offline texts (so its vocabulary covers them) and has eos but no pad token, like most LLMs."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from tests.e2e.conftest import embedder, example_data, minilm, services, trainer  # noqa: F401
from tunewire.v1 import trainer_pb2

SUCCEEDED = trainer_pb2.Job.SUCCEEDED


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, example_data) -> str:  # noqa: F811 - the imported fixture
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-llama")
    corpus = [
        t
        for name in ("trec_questions.csv", "sms_spam.csv")
        for t in pd.read_csv(example_data / name, dtype=str, keep_default_na=False)["text"]
    ]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe_trainer = trainers.BpeTrainer(
        vocab_size=2000,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(corpus, bpe_trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=128,
    )
    assert tokenizer.pad_token is None
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaModel(config).save_pretrained(out)
    return str(out)


def run_job(trainer, config, **datasets):  # noqa: F811 - the fixture's value, passed in
    """Create a job, wait for it, insist that it succeeded; returns (job, events)."""
    job = trainer.create_job(config, **datasets)
    events: list = []
    job = trainer.wait(job.id, on_event=events.append)
    assert job.state == SUCCEEDED, job.error
    return job, events


def logs(events) -> list[str]:
    return [e.log.message for e in events if e.WhichOneof("event") == "log"]
