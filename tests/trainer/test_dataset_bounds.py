"""Data sets bounded in time and memory: the header check is one pass and caps columns, a parse
stops when its client has gone, a table too large parsed is RESOURCE_EXHAUSTED, and parsed
tables are kept in a cache bounded by bytes."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from services.trainer.datasets import DatasetStore, read_table
from services.trainer.frame_cache import FrameCache, frame_bytes
from tunewire.errors import Cancelled, InvalidArgument, ResourceExhausted


def _csv(rows: int, width: int = 2) -> bytes:
    header = ",".join(f"c{i}" for i in range(width))
    body = "".join(",".join(f"r{r}v{i}" for i in range(width)) + "\n" for r in range(rows))
    return (header + "\n" + body).encode()


def test_a_hundred_thousand_columns_are_refused_at_once(tmp_path):
    """Counting each name against every other ran for minutes here."""
    store = DatasetStore(tmp_path)
    wide = ",".join(f"c{i}" for i in range(100_000)).encode() + b"\n" + b"x," * 99_999 + b"x\n"
    started = time.monotonic()
    with pytest.raises(ResourceExhausted) as info:
        store.put([wide], "wide.csv")
    assert info.value.reason == "TOO_MANY_COLUMNS" and info.value.field == "dataset"
    assert time.monotonic() - started < 20
    assert not list(tmp_path.glob("ds-*"))


def test_repeated_names_among_many_columns_are_found_in_one_pass(tmp_path):
    names = [f"c{i}" for i in range(9_999)] + ["c17"]
    path = tmp_path / "d.csv"
    path.write_text(",".join(names) + "\n" + ",".join("x" * len(names)) + "\n")
    started = time.monotonic()
    with pytest.raises(InvalidArgument, match="c17"):
        read_table(path, "csv")
    assert time.monotonic() - started < 20


def test_pieces_give_the_whole_table(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(_csv(3000, 3))
    assert read_table(path, "csv").equals(pd.read_csv(path, dtype=str, keep_default_na=False))
    lines = tmp_path / "d.jsonl"
    lines.write_text("".join(f'{{"a": {i}, "b": "t{i}"}}\n' for i in range(1000)))
    assert read_table(lines, "jsonl").equals(pd.read_json(lines, lines=True, dtype=False))


def test_a_client_that_leaves_stops_the_parse_and_nothing_is_stored(tmp_path):
    store = DatasetStore(tmp_path)
    asked = []

    def cancelled() -> bool:
        asked.append(1)
        return len(asked) > 1  # gone after the first piece

    with pytest.raises(Cancelled):
        store.put([_csv(5000)], "d.csv", cancelled=cancelled)
    assert not list(tmp_path.glob("ds-*")) and not list(tmp_path.glob(".upload-*"))


def test_a_table_too_large_parsed_is_resource_exhausted(tmp_path):
    store = DatasetStore(tmp_path, max_frame_bytes=50_000)
    with pytest.raises(ResourceExhausted) as info:
        store.put([_csv(5000)], "d.csv")
    assert info.value.reason == "DATASET_TOO_LARGE"
    assert store.put([_csv(50)], "small.csv").rows == 50


def test_parsed_tables_are_kept_within_the_cache_bytes(tmp_path):
    one = pd.read_csv(__import__("io").BytesIO(_csv(400)), dtype=str)
    store = DatasetStore(tmp_path, cache_bytes=int(frame_bytes(one) * 2.5))
    ids = [store.put([_csv(400, 2).replace(b"r", bytes([97 + i]))], "d.csv").id for i in range(4)]
    for ds_id in ids:
        store.load(ds_id)
    cache = store._frames
    assert len(cache) == 2 and cache.bytes <= cache.max_bytes
    assert cache.get(ids[0]) is None and cache.get(ids[3]) is not None
    loaded = store.load(ids[3])
    loaded["c0"] = "changed"  # a caller's copy: the cache keeps the table as stored
    assert store.load(ids[3])["c0"].iloc[0] != "changed"


def test_a_frame_larger_than_the_cache_is_not_kept():
    cache = FrameCache(max_bytes=10)
    cache.put("big", pd.DataFrame({"a": ["x" * 100]}))
    assert cache.get("big") is None and cache.bytes == 0


def test_a_parquet_file_too_large_uncompressed_is_refused_before_it_is_read(tmp_path):
    """Parquet compresses: 1 MB on disk can be far more in memory; its footer says how much."""
    path = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["same text again " * 20] * 20_000, "label": ["1"] * 20_000}).to_parquet(
        path, row_group_size=5_000
    )
    assert path.stat().st_size < 200_000
    with pytest.raises(ResourceExhausted) as info:
        read_table(path, "parquet", max_bytes=1_000_000)
    assert info.value.reason == "DATASET_TOO_LARGE"
    assert len(read_table(path, "parquet")) == 20_000
