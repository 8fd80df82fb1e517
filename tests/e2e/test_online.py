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
    np.testing.assert_allclose(
        online["label_probabilities_spam"], batch["label_probabilities_spam"], rtol=1e-6
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
