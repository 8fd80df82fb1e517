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
    elif fmt == "json":
        FRAME.to_json(path, orient="records")  # Ludwig's `.json`: one array of records
    elif fmt == "xlsx":
        FRAME.to_excel(path, index=False)
    elif fmt == "feather":
        FRAME.to_feather(path)
    elif fmt == "orc":
        FRAME.to_orc(path)
    else:
        FRAME.to_parquet(path)
    return path.read_bytes()


_STORED = {"xlsx": "excel"}


@pytest.mark.parametrize(
    "fmt", ["csv", "tsv", "json", "jsonl", "parquet", "xlsx", "feather", "orc"]
)
def test_formats_round_trip(tmp_path, fmt):
    store = DatasetStore(tmp_path / "ds")
    rec = store.put([_bytes(fmt, tmp_path)], f"data.{fmt}")
    assert (rec.rows, rec.columns, rec.format) == (3, ["text", "label"], _STORED.get(fmt, fmt))
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
        (b"a,b\n1,2\n", "x.sav", "format"),
        (b"a,b\n1,2\n", "x.xlsx", "cannot parse the file as excel"),
        (b'{"a": 1}\n{"a": 2}\n', "x.json", "name it .jsonl"),
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


def test_tab_separated_csv_is_detected_as_ludwig_does(tmp_path):
    store = DatasetStore(tmp_path / "ds")
    rec = store.put([b"text\tlabel\nhello, world\t1\nbye\t0\n"], "tabs.csv")
    assert (rec.format, rec.columns, rec.rows) == ("csv", ["text", "label"], 2)
    assert list(store.load(rec.id)["text"]) == ["hello, world", "bye"]
    pipes = store.put([b"text|label\na, b|1\nc|0\n"], "pipes.csv")
    assert store.load(pipes.id).columns.tolist() == ["text", "label"]


def test_same_bytes_under_another_format_are_read_as_that_format(tmp_path):
    store = DatasetStore(tmp_path / "ds")
    data = b"a,b\tc\n1,2\t3\n"
    as_csv = store.put([data], "x.csv", "csv")
    as_tsv = store.put([data], "x.csv", "tsv")
    renamed = store.put([data], "x.tsv")
    assert as_csv.id != as_tsv.id == renamed.id
    assert (as_tsv.format, as_tsv.columns) == ("tsv", ["a,b", "c"])
    assert store.load(as_tsv.id).columns.tolist() == ["a,b", "c"]


@pytest.mark.parametrize(
    "fmt, needle", [("pickle", "does not read"), ("hdf5", "does not read"), ("csvx", "not a data")]
)
def test_formats_not_read_are_refused_by_name(tmp_path, fmt, needle):
    with pytest.raises(InvalidArgument) as info:
        DatasetStore(tmp_path / "ds").put([b"a\n1\n"], "x.bin", fmt)
    assert needle in info.value.message and info.value.field == "metadata.format"
