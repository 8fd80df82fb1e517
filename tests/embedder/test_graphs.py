"""CUDA graphs per shape bucket (services/embedder/graphs.py): the buckets, the padding that
makes a batch fit one, and the clean fallback where there is no GPU. The captured path itself
runs on the device machine (bench/embedder_throughput.py --graph-rows checks its vectors)."""

import pytest
import torch

from services.embedder.encoder import Encoder
from services.embedder.graphs import bucket_for, bucket_tokens, padded_inputs
from services.embedder.source import resolve
from services.embedder.varlen import pack
from tests.embedder.conftest import TEXTS, rel_error
from tunewire.pooling import pool_packed


@pytest.mark.parametrize("n", [1, 255, 256, 257, 1000, 4097, 65000, 65536, 70000])
def test_a_bucket_holds_the_batch_with_at_most_an_eighth_more_tokens(n):
    tokens = bucket_tokens(n)
    assert tokens >= n and (tokens <= 256 or tokens <= n * 1.125)


def test_batches_of_one_budget_share_few_buckets():
    sizes = {bucket_tokens(n) for n in range(57345, 65537)}
    assert sizes == {61440, 65536}


@pytest.mark.parametrize("lengths", [[3], [5, 1, 7], [100] * 30, [1] * 300, [512, 16, 16]])
def test_padded_inputs_fill_the_bucket_with_texts_of_their_own(lengths):
    bucket = bucket_for(lengths)
    packed = pack([[7] * n for n in lengths])
    padded = padded_inputs(packed, bucket, pad_id=0)
    cu = padded.cu_seq_lens.tolist()
    assert padded.input_ids.shape == (1, bucket.tokens) == padded.position_ids.shape
    assert len(cu) == bucket.texts + 1 and cu[-1] == bucket.tokens
    assert cu[: len(lengths) + 1] == packed.cu_seq_lens.tolist()
    assert all(b >= a for a, b in zip(cu, cu[1:]))  # empty texts at the end, never negative
    assert all(b - a <= bucket.max_length for a, b in zip(cu, cu[1:]))
    for start, end in zip(cu, cu[1:]):  # positions restart at 0 in every text, pad texts too
        assert padded.position_ids[0, start:end].tolist() == list(range(end - start))
    assert padded.input_ids[0, sum(lengths) :].eq(0).all()


def test_padding_to_a_bucket_leaves_the_real_texts_vectors(tiny_llama_path):
    """The model over the padded inputs gives the real texts the vectors of the plain packed
    batch (pad texts attend only to themselves; empty texts are skipped)."""
    encoder = Encoder(resolve(tiny_llama_path), torch.device("cpu"))
    encoder.load()
    ids = encoder.tokenize(TEXTS, 64)
    packed = pack(ids)
    padded = padded_inputs(
        packed, bucket_for([len(r) for r in ids]), encoder.tokenizer.pad_token_id
    )
    with torch.inference_mode():
        hidden = encoder._hidden_packed(padded)[0, : packed.input_ids.shape[1]]
        got = pool_packed(hidden, packed.cu_seq_lens, "mean")
    plain = encoder.run(ids, pooling="mean", layer=0, normalize=False, packed=True)
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-6)


def test_graphs_fall_back_to_plain_launches_on_a_cpu(tiny_llama_path):
    encoder = Encoder(resolve(tiny_llama_path), torch.device("cpu"), graphs=True)
    encoder.load()
    assert encoder.packed and not encoder.graphed
    ids = encoder.tokenize(TEXTS, 64)
    assert encoder.run(ids, pooling="mean", layer=0, normalize=False).shape[0] == len(TEXTS)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_graphed_batches_give_the_plain_vectors_on_a_gpu(tiny_llama_path, compile):
    """Batches of several buckets, a bucket again after another: each replay gives the vectors
    of the same batch launched plainly (bf16: within the tolerance of two batch sizes' GEMMs)."""
    torch._dynamo.reset()
    cuda = torch.device("cuda")
    plain = Encoder(resolve(tiny_llama_path), cuda, compile=compile)
    graphed = Encoder(resolve(tiny_llama_path), cuda, compile=compile, graphs=True)
    graphed.load()
    assert graphed.graphed and graphed.packed
    ids = plain.tokenize(TEXTS * 40, 64)
    for batch in (ids[:3], ids[3:60], ids, ids[5:6], ids[3:60], ids[::-1]):
        want = plain.run(batch, pooling="mean", layer=0, normalize=False)
        with graphed.lock:
            got = graphed.run(batch, pooling="mean", layer=0, normalize=False)
        assert rel_error(got.numpy(), want.numpy()) < 2e-2
    captured = graphed._graphed.buckets
    with graphed.lock:
        graphed.run(ids[3:60], pooling="mean", layer=0, normalize=False)
    assert graphed._graphed.buckets == captured >= 2  # a bucket seen before replays its graph
