"""Prompt masking, EOS, packing without cross-contamination, and the fused loss."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.trainer.model_types import resolve
from services.trainer.recipes.generative import loss as loss_mod
from services.trainer.recipes.generative.data import (
    IGNORE,
    BatchPlan,
    build_samples,
    collate_packed,
    collate_padded,
    pack_rows,
)
from services.trainer.recipes.generative.loss import linear_cross_entropy
from services.trainer.recipes.generative.model import CausalLMWithLoss
from tests.generative.conftest import llm_config, task_frame


@pytest.fixture(scope="module")
def tiny(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").eval()
    return model, AutoTokenizer.from_pretrained(tiny_model), resolve(llm_config(tiny_model))


def test_prompt_is_masked_and_eos_appended(tiny):
    _, tok, cfg = tiny
    df = task_frame().head(3)
    samples = build_samples(cfg, df, tok, 128)
    for s, row in zip(samples, df.to_dict("records")):
        prompt = tok(f"what does {row['name']} like ? answer :")["input_ids"]
        target = tok(row["answer"], add_special_tokens=False)["input_ids"]
        assert s.input_ids == prompt + target + [tok.eos_token_id]
        assert s.labels == [IGNORE] * len(prompt) + target + [tok.eos_token_id]


def test_packed_rows_reset_positions(tiny):
    _, tok, cfg = tiny
    samples = build_samples(cfg, task_frame(), tok, 128)
    rows = pack_rows(samples, 24)
    batch = collate_packed(rows, 24, tok.pad_token_id)
    assert all(sum(len(s.input_ids) for s in r) <= 24 for r in rows)
    assert sorted(map(id, [s for r in rows for s in r])) == sorted(map(id, samples))
    first = rows[0][0]
    n = len(first.input_ids)
    assert batch.position_ids[0, :n].tolist() == list(range(n))
    assert batch.position_ids[0, n] == 0  # the next sample starts over
    assert batch.n_real == sum(len(s.input_ids) for s in samples)
    # The labelled positions are found on the host and travel with the batch.
    labelled = (batch.labels.reshape(-1) != IGNORE).nonzero().squeeze(1)
    assert torch.equal(batch.targets, labelled) and torch.equal(
        batch.to(torch.device("cpu")).targets, labelled
    )
    assert batch.n_target == sum(s.n_target for s in samples)


def test_packed_and_padded_give_the_same_loss(tiny):
    model, tok, cfg = tiny
    wrapper = CausalLMWithLoss(model)
    samples = build_samples(cfg, task_frame(), tok, 128)
    with torch.no_grad():
        padded = wrapper(collate_padded(samples, tok.pad_token_id))
        packed = wrapper(collate_packed(pack_rows(samples, 32), 32, tok.pad_token_id))
    assert int(padded.n_tokens) == int(packed.n_tokens) == sum(s.n_target for s in samples)
    assert float(packed.loss_sum) == pytest.approx(float(padded.loss_sum), rel=1e-5)
    assert int(packed.n_correct) == int(padded.n_correct)


def test_rows_without_boundaries_or_padding_run_dense_with_the_same_loss(tiny):
    """A batch whose rows are each one whole sample needs no mask and no position ids."""
    model, tok, cfg = tiny
    wrapper = CausalLMWithLoss(model)
    samples = build_samples(cfg, task_frame(), tok, 128)
    width = len(samples[0].input_ids)
    same = [s for s in samples if len(s.input_ids) == width][:3]
    assert len(same) >= 2
    packed = collate_packed([[s] for s in same], width, tok.pad_token_id)
    padded = collate_padded(same, tok.pad_token_id)
    assert packed.dense and padded.dense and packed.to(torch.device("cpu")).dense
    assert not collate_packed(
        [[s] for s in same], width + 1, tok.pad_token_id
    ).dense  # a padded tail
    short = dataclasses.replace(
        same[0], input_ids=same[0].input_ids[:-1], labels=same[0].labels[:-1]
    )
    assert not collate_padded([*same, short], tok.pad_token_id).dense  # rows of several lengths
    assert not collate_packed([[same[0]], [short]], width, tok.pad_token_id).dense
    with torch.no_grad():
        dense = wrapper(packed)
        varlen = wrapper(dataclasses.replace(packed, dense=False))  # positions and boundaries
        masked = wrapper(dataclasses.replace(padded, dense=False))  # an all-ones mask
    assert float(dense.loss_sum) == pytest.approx(float(varlen.loss_sum), rel=1e-5)
    assert float(dense.loss_sum) == pytest.approx(float(masked.loss_sum), rel=1e-5)
    assert int(dense.n_correct) == int(varlen.n_correct)


def test_no_cross_contamination_inside_a_packed_row(tiny):
    """Changing the first sample of a row must not change the loss of the second."""
    model, tok, cfg = tiny
    wrapper = CausalLMWithLoss(model)
    a, b = build_samples(cfg, task_frame().head(2), tok, 128)
    other = build_samples(cfg, task_frame().iloc[5:6], tok, 128)[0]

    def loss_of_second(first):
        batch = collate_packed([[first, b]], 32, tok.pad_token_id)
        labels = batch.labels.clone()
        labels[0, : len(first.input_ids)] = IGNORE  # score only the second sample
        batch = dataclasses.replace(batch, labels=labels, targets=None)  # targets found anew
        with torch.no_grad():
            return float(wrapper(batch).loss_sum)

    alone = wrapper(collate_padded([b], tok.pad_token_id)).loss_sum.item()
    assert loss_of_second(a) == pytest.approx(alone, rel=1e-5)
    assert loss_of_second(other) == pytest.approx(alone, rel=1e-5)


def test_fused_cross_entropy_matches_reference(monkeypatch):
    monkeypatch.setattr(loss_mod, "_CHUNK_ELEMENTS", 50 * 4)  # several chunks
    torch.manual_seed(0)
    h = torch.randn(3, 7, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    labels = torch.randint(0, 50, (3, 7))
    labels[0, :3] = IGNORE
    stats = linear_cross_entropy(h, w, labels)
    (stats.loss_sum * 0.5).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = torch.nn.functional.cross_entropy(
        (h @ w.t()).reshape(-1, 50), labels.reshape(-1), reduction="sum", ignore_index=IGNORE
    )
    (ref * 0.5).backward()
    assert stats.loss_sum.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(gh, h.grad, atol=1e-5) and torch.allclose(gw, w.grad, atol=1e-5)
    assert int(stats.n_tokens) == 18
    given = linear_cross_entropy(h, w, labels, (labels.reshape(-1) != IGNORE).nonzero().squeeze(1))
    assert torch.equal(given.loss_sum, stats.loss_sum) and int(given.n_tokens) == 18
    assert int(stats.n_correct) == int(((h @ w.t()).argmax(-1) == labels)[labels != IGNORE].sum())


def test_batch_plan_shards_the_same_samples(tiny):
    _, tok, cfg = tiny
    samples = build_samples(cfg, task_frame(), tok, 128)
    kw = dict(row_len=32, packed=True, pad_id=tok.pad_token_id, shuffle=True, seed=3)
    one = BatchPlan(samples, batch_size=2, world=1, rank=0, **kw).epoch(0)
    two = [BatchPlan(samples, batch_size=1, world=2, rank=r, **kw).epoch(0) for r in (0, 1)]
    assert len(one) == len(two[0]) == len(two[1])
    for whole, r0, r1 in zip(one, *two):
        assert whole.n_target == r0.n_target + r1.n_target


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_batch_size_counts_examples_packed_or_not(tiny, packed):
    """Ludwig's batch_size is examples a step: packing lays them out, it does not add more."""
    _, tok, cfg = tiny
    samples = build_samples(cfg, task_frame(), tok, 128)  # 12 samples
    plan = BatchPlan(
        samples,
        batch_size=5,
        row_len=64,
        packed=packed,
        pad_id=tok.pad_token_id,
        world=1,
        rank=0,
        shuffle=True,
        seed=3,
    )
    micro = plan.epoch(0)
    assert [b.n_samples for b in micro] == [5, 5, 2]
    if packed:  # short samples share a row
        assert micro[0].input_ids.shape[0] < 5
