"""Data sets: every format, stored by content hash, bad files refused with a clear reason."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from services.trainer.datasets import DatasetStore
from tunewire.errors import InvalidArgument, NotFound

FRAME = pd.DataFrame({"text": ["a b", "c, d", "é ü"], "label": ["1", "0", "1"]})


def _bytes(fmt: str, tmp_path) -> bytes:
    path = tmp_path / f"f.{fmt}"
    if fmt == "csv":
        FRAME.to_csv(path, index=False)
    elif fmt == "tsv":
        FRAME.to_csv(path, sep="\t", index=False)
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in FRAME.to_dict("records")))
    else:
        FRAME.to_parquet(path)
    return path.read_bytes()


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_formats_round_trip(tmp_path, fmt):
    store = DatasetStore(tmp_path / "ds")
    rec = store.put([_bytes(fmt, tmp_path)], f"data.{fmt}")
    assert (rec.rows, rec.columns, rec.format) == (3, ["text", "label"], fmt)
    df = store.load(rec.id)
    assert list(df["text"]) == list(FRAME["text"])
    assert [str(v) for v in df["label"]] == list(FRAME["label"])


def test_same_bytes_same_id_and_survives_reopen(tmp_path):
    store = DatasetStore(tmp_path / "ds")
    data = _bytes("csv", tmp_path)
    a = store.put([data[:5], data[5:]], "a.csv")
    b = store.put([data], "b.csv")
    assert a.id == b.id
    assert DatasetStore(tmp_path / "ds").get(a.id).rows == 3
    # No temporary files are left behind.
    assert [p.name for p in (tmp_path / "ds").iterdir()] == [a.id]


@pytest.mark.parametrize(
    "payload, name, needle",
    [
        (b"", "e.csv", "empty"),
        (b"text,label\n", "h.csv", "no rows"),
        (b"\xff\xfe\x00bad", "x.csv", "UTF-8"),
        (b'{"a": 1}\n{"a": ', "x.jsonl", "cannot parse"),
        (b"not parquet", "x.parquet", "cannot parse"),
        (b"a,b\n1,2\n", "x.xlsx", "format"),
    ],
)
def test_bad_files(tmp_path, payload, name, needle):
    store = DatasetStore(tmp_path / "ds")
    with pytest.raises(InvalidArgument) as info:
        store.put([payload], name)
    assert needle in str(info.value)
    assert not any(p.name.startswith("ds-") for p in (tmp_path / "ds").iterdir())


def test_unknown_and_malformed_ids(tmp_path):
    store = DatasetStore(tmp_path / "ds")
    with pytest.raises(NotFound):
        store.get("ds-0000")
    with pytest.raises(InvalidArgument):
        store.get("../etc")
