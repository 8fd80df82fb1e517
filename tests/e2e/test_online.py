"""Online prediction over gRPC (EmbedderService.PredictRows): rows inline, the head fetched from
the trainer by job id or read from an artifact directory, answered with Ludwig's columns, and
nothing left behind but cached vectors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clients.sdk import predictions_frame
from tests.e2e.conftest import SPAMMY
from tunewire.errors import FailedPrecondition, InvalidArgument, NotFound

HAM = "Ok see you at home later, I will bring the dinner"


def stored(services) -> dict[str, set[str]]:
    """What the trainer keeps: data sets and jobs (records and work directories)."""
    out = {}
    for name in ("datasets", "jobs", "artifacts"):
        root = services.data_dir / name
        out[name] = {p.name for p in root.iterdir()} if root.is_dir() else set()
    return out


def test_a_spammy_text_is_spam_and_nothing_is_stored(
    sms_spam_job, embedder, trainer, services, tmp_path
):
    before = stored(services)
    jobs_before = len(trainer.list_jobs())
    got = embedder.predict_rows(sms_spam_job.id, [{"text": SPAMMY}, {"text": HAM}])
    assert list(got["label_predictions"]) == ["spam", "ham"]
    assert set(got.columns) == {
        "label_predictions",
        "label_probability",
        "label_probabilities",
        "label_probabilities_ham",
        "label_probabilities_spam",
    }
    np.testing.assert_allclose(got["label_probabilities_spam"] + got["label_probabilities_ham"], 1)
    assert got["label_probability"][0] == got["label_probabilities_spam"][0]
    assert got["label_probabilities"][0] == pytest.approx(
        [got["label_probabilities_ham"][0], got["label_probabilities_spam"][0]]
    )
    # A DataFrame in, other columns ignored; the same answer again comes from the cache.
    frame = pd.DataFrame({"text": [SPAMMY], "unused": [1]})
    again = embedder.predict_rows(sms_spam_job.id, frame)
    assert again["label_probabilities_spam"][0] == pytest.approx(got["label_probabilities_spam"][0])
    assert stored(services) == before
    assert len(trainer.list_jobs()) == jobs_before


def test_online_equals_the_trainers_batch_predict(sms_spam_job, embedder, trainer, tmp_path):
    rows = pd.DataFrame({"text": [SPAMMY, HAM, "Free entry in 2 a wkly comp to win", ""]})
    online = embedder.predict_rows(sms_spam_job.id, rows)
    ds = trainer.upload_dataset(rows)  # a DataFrame, sent as Parquet
    batch = predictions_frame(trainer.predict(sms_spam_job.id, ds.id))
    trainer.delete_dataset(ds.id)  # the comparison's data set goes too
    with pytest.raises(NotFound):
        trainer.get_dataset(ds.id)
    assert list(online["label_predictions"]) == list(batch["label_predictions"])
    # atol: a probability near 0 (7e-6 for HAM) differs in its last bits when the head's matmul
    # splits its sums differently (one intra-op thread online, the trainer's own count).
    np.testing.assert_allclose(
        online["label_probabilities_spam"], batch["label_probabilities_spam"], rtol=1e-6, atol=1e-9
    )
    # By artifact directory too (the embedded embedder may read any path).
    local = trainer.download_artifact(sms_spam_job.id, tmp_path / "artifact")
    by_path = embedder.predict_rows(str(local), rows)
    assert list(by_path["label_predictions"]) == list(online["label_predictions"])


def test_bad_requests_name_the_field(sms_spam_job, embedder, tmp_path):
    with pytest.raises(InvalidArgument) as err:
        embedder.predict_rows(sms_spam_job.id, {"message": SPAMMY})
    assert err.value.field == "columns" and "'text'" in err.value.message
    with pytest.raises(NotFound):
        embedder.predict_rows("job-000000000000", {"text": SPAMMY})
    with pytest.raises(NotFound):
        embedder.predict_rows(str(tmp_path), {"text": SPAMMY})
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "tunewire.json").write_text('{"kind": "generative"}')
    with pytest.raises(FailedPrecondition, match="vLLM"):
        embedder.predict_rows(str(tmp_path / "gen"), {"text": SPAMMY})


def mixed_artifact(out, minilm):
    """A predictive artifact (random head) reading a text, a number and a category column."""
    import torch

    from tunewire import heads as th
    from tunewire.config.ecd import parse_ecd
    from tunewire.features import InputMetadata, OutputMetadata

    raw = {
        "model_type": "ecd",
        "input_features": [
            {
                "name": "text",
                "type": "text",
                "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": minilm},
                "preprocessing": {"max_sequence_length": 32},
            },
            {"name": "n", "type": "number"},
            {"name": "c", "type": "category"},
        ],
        "output_features": [{"name": "label", "type": "category"}],
    }
    cfg = parse_ecd(raw)
    refs = th.encoder_refs(cfg)
    refs["text"].dimension = 384
    metas = {
        "n": InputMetadata("n", "number", "n", mean=5.0, std=2.0, fill=5.0),
        "c": InputMetadata("c", "category", "c", vocab=["<UNK>", "red", "blue"]),
    }
    meta = OutputMetadata("label", "category", "label", vocab=["ham", "spam"])
    torch.manual_seed(3)
    model = th.PredictiveModel(
        th.input_specs(cfg, metas, {"text": 384}), cfg.combiner, [(cfg.output_features[0], meta)]
    )
    with torch.no_grad():  # a head that depends on every input
        for p in model.parameters():
            p.normal_(0, 0.5)
    th.save(model, out, encoders=refs, config=raw, manifest_extra={})
    return out


def test_non_text_features_come_from_the_row_as_in_batch_predict(
    embedder, trainer, minilm, tmp_path
):
    artifact = mixed_artifact(tmp_path / "mixed", minilm)
    rows = pd.DataFrame(
        {
            "text": [SPAMMY, HAM, HAM, "x"],
            "n": [1.0, 9.0, None, 5.0],
            "c": ["red", "blue", "x", None],
        }
    )
    online = embedder.predict_rows(str(artifact), rows)
    ds = trainer.upload_dataset(rows)
    batch = predictions_frame(trainer.predict(str(artifact), ds.id))
    trainer.delete_dataset(ds.id)
    np.testing.assert_allclose(
        online["label_probabilities_spam"], batch["label_probabilities_spam"], rtol=1e-5
    )
    # The number and the category change the answer (the head reads them from the row).
    other = embedder.predict_rows(str(artifact), rows.assign(n=[9.0, 1.0, 3.0, 0.0], c="blue"))
    assert not np.allclose(other["label_probabilities_spam"], online["label_probabilities_spam"])


def test_a_number_the_model_overflows_on_is_invalid_argument(embedder, minilm, tmp_path):
    """1e308 in a number column: the head's output is not a number (it was NaN, which the HTTP
    front door could not even serialise: a 500). Refused with the row; other rows still answer."""
    artifact = str(mixed_artifact(tmp_path / "mixed", minilm))
    rows = pd.DataFrame({"text": ["a", "b"], "n": ["3", "1e308"], "c": ["red", "red"]})
    with pytest.raises(InvalidArgument) as err:
        embedder.predict_rows(artifact, rows)
    assert err.value.field == "columns" and "row 1" in err.value.message
    fine = embedder.predict_rows(artifact, rows[:1])
    assert np.isfinite(fine["label_probability"]).all()


def test_a_dict_of_lists_is_columns_and_a_list_is_no_cell(sms_spam_job, embedder):
    """`predict_rows({"text": [a, b]})` predicted one row from the text "['a', 'b']"."""
    got = embedder.predict_rows(sms_spam_job.id, {"text": [SPAMMY, HAM]})
    assert list(got["label_predictions"]) == ["spam", "ham"]
    for rows in ({"text": [SPAMMY], "x": "y"}, [{"text": [SPAMMY]}]):
        with pytest.raises(InvalidArgument) as err:
            embedder.predict_rows(sms_spam_job.id, rows)
        assert err.value.field == "rows"
