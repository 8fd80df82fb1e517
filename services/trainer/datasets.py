"""Data sets stored by content hash.

A client streams a file's bytes; they land in a temporary file, are parsed once to check that
they are a readable table (and to count rows and columns), then renamed into
`<data_dir>/datasets/<id>/` so a crash never leaves a half-stored data set. The id derives from the
sha256 of the bytes and the format they are read as: uploading the same file twice stores it once,
and the same bytes uploaded as another format (a `.csv` renamed `.tsv`) are that other table.

Memory and time are bounded. CSV, TSV and JSON lines are parsed in pieces: the parsed size is
added up as it grows, a table past `max_frame_bytes` is RESOURCE_EXHAUSTED before it is whole, and
between pieces the parse stops when its caller is gone (`cancelled`). The header of a delimited
file is checked first, in one pass (repeated names; more than `MAX_COLUMNS` columns is refused:
100,000 columns took pandas alone seconds). Parsed frames are kept in a cache bounded by bytes
(frame_cache.py).

A data set belongs to the principal that uploaded it (`tunewire.auth`), and its id covers that
principal too: a retried upload gets the same id, two principals' identical files are two data
sets, and another principal asking for it gets NOT_FOUND, as for an id that does not exist
(admin sees all). Lookups check the caller being served unless told whom to check.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from zipfile import BadZipFile

import pandas as pd
import structlog

from services.trainer.frame_cache import DEFAULT_MAX_BYTES as DEFAULT_CACHE_BYTES
from services.trainer.frame_cache import FrameCache, frame_bytes
from tunewire.auth import Principal, current_principal
from tunewire.errors import Cancelled, InvalidArgument, NotFound, ResourceExhausted
from tunewire.paths import check_path_text

log = structlog.get_logger(__name__)

# Ludwig's formats that pandas reads from bytes without running code; pickle, hdf5, html, sas,
# spss, stata and fixed-width are refused by name (see `guess_format`).
FORMATS = ("csv", "tsv", "json", "jsonl", "parquet", "excel", "feather", "orc")
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "tsv",
    # Ludwig reads `.json` as one array of records and `.jsonl` as one object a line.
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".xlsx": "excel",
    ".xlsm": "excel",
    ".feather": "feather",
    ".orc": "orc",
}
# Ludwig's format names that name one of ours.
ALIASES = {"xlsx": "excel", "xls": "excel", "pq": "parquet", "ndjson": "jsonl"}
_REFUSED = ("fwf", "hdf5", "html", "pickle", "sas", "spss", "stata", "df")
DEFAULT_MAX_DATASET_BYTES = 2 * 1024**3
# A parsed table larger than this (pandas' deep memory use) is RESOURCE_EXHAUSTED. A table is held
# about three times over while a job is admitted (parsed, labels filtered) and again while one
# runs (its splits): with the cache beside them, 512 MiB keeps the trainer within the cpu-dev
# pod's 6 GiB (tests/reliability/test_memory.py).
DEFAULT_MAX_FRAME_BYTES = 512 * 1024**2
MAX_COLUMNS = 10_000
# Rows of a first piece; each later piece aims at this fraction of the size limit (32 MiB of a
# 2 GiB limit), at least _MIN_PIECE_BYTES: parsing a piece holds it as Python objects a while,
# several times its size, so pieces grow with the limit, not with the file.
_FIRST_ROWS = 256
_PIECES_PER_LIMIT = 64
_MIN_PIECE_BYTES = 1 << 20


def _never() -> bool:
    return False


@dataclass
class DatasetRecord:
    id: str
    filename: str
    format: str
    rows: int
    columns: list[str]
    size_bytes: int
    sha256: str
    owner: str = ""  # the principal that uploaded it ("" on a trainer without tokens)


def check_format(fmt: str) -> str:
    """A format name as Ludwig spells it (`--data_format`), or InvalidArgument naming it."""
    fmt = ALIASES.get(fmt.lower(), fmt.lower())
    if fmt in FORMATS:
        return fmt
    why = (
        "is one of Ludwig's formats that tunewire does not read (it would run code or need a "
        "reader the server does not ship); convert it to parquet or csv"
        if fmt in _REFUSED
        else "is not a data format"
    )
    raise InvalidArgument(f"{fmt!r} {why}; formats: {', '.join(FORMATS)}", field="metadata.format")


def guess_format(filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise InvalidArgument(
            f"cannot tell the format of {filename!r} from its extension; use one of "
            f"{', '.join(sorted(_EXTENSIONS))} or name the format",
            field="metadata.format",
        )
    return _EXTENSIONS[suffix]


def sniff_separator(path: Path) -> str:
    """The separator of a `.csv` file, detected as Ludwig does: `csv.Sniffer` over the first
    100 KiB, choosing among comma, tab and pipe, comma when it cannot tell."""
    import csv

    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        sample = fh.read(100 * 1024)
    if "\n" in sample[:-1]:
        sample = sample[: sample.rindex("\n")]  # a cut last line would mislead the sniffer
    try:
        return csv.Sniffer().sniff(sample, delimiters=",\t|").delimiter
    except csv.Error:
        return ","


def read_table(
    path: Path,
    fmt: str,
    max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    cancelled: Callable[[], bool] = _never,
) -> pd.DataFrame:
    """Parse a stored file; malformed content is an InvalidArgument that says what and where, a
    table over `max_bytes` parsed is RESOURCE_EXHAUSTED, and `cancelled()` true stops the parse
    (Cancelled) between pieces."""
    sep = {"csv": None, "tsv": "\t"}.get(fmt)
    try:
        if fmt in ("csv", "tsv"):
            sep = sniff_separator(path) if fmt == "csv" else "\t"
            _check_header(path, sep)
            options = {"quoting": 3} if fmt == "tsv" else {}
            reader = pd.read_csv(
                path,
                sep=sep,
                dtype=str,
                keep_default_na=False,
                encoding="utf-8",
                iterator=True,
                **options,
            )
            df = _pieces(reader, max_bytes, cancelled)
        elif fmt == "json":
            df = _read_json_records(path)
        elif fmt == "jsonl":
            reader = pd.read_json(path, lines=True, dtype=False, chunksize=_FIRST_ROWS)
            df = _pieces(reader, max_bytes, cancelled)
        elif fmt == "parquet":
            _check_size(_parquet_bytes(path), max_bytes)  # before reading: it compresses
            df = pd.read_parquet(path)
        elif fmt == "excel":
            df = pd.read_excel(path, engine="openpyxl")
        elif fmt == "feather":
            df = pd.read_feather(path)
        elif fmt == "orc":
            df = pd.read_orc(path)
        else:
            raise InvalidArgument(f"unknown format {fmt!r}", field="metadata.format")
    except (InvalidArgument, ResourceExhausted, Cancelled):
        raise
    except UnicodeDecodeError as exc:
        raise InvalidArgument(
            f"the file is not valid UTF-8 ({exc.reason} at byte {exc.start})", field="dataset"
        ) from None
    # TypeError: pandas' JSON reader on lines that are not objects (`[1, 2]`, `3`); KeyError and
    # BadZipFile: openpyxl on bytes that are not a workbook.
    except (ValueError, TypeError, KeyError, pd.errors.ParserError, OSError, BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidArgument(f"cannot parse the file as {fmt}: {first}", field="dataset") from None
    _check_size(frame_bytes(df), max_bytes)
    df.columns = [str(c).strip() for c in df.columns]
    # An unnamed leading index column (pandas' to_csv default) is not a feature.
    if len(df.columns) and df.columns[0] in ("", "Unnamed: 0"):
        df = df.drop(columns=df.columns[0])
    return df


def _parquet_bytes(path: Path) -> int:
    """The uncompressed size of a Parquet file's data, from its footer (nothing else read)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    return sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ResourceExhausted(
            f"the data set takes more than {max_bytes} bytes of memory parsed "
            "(--max-dataset-memory-bytes): split it or raise the limit",
            field="dataset",
            reason="DATASET_TOO_LARGE",
        )


def _pieces(reader, max_bytes: int, cancelled: Callable[[], bool]) -> pd.DataFrame:
    """A table read piece by piece from a pandas reader (CSV: pieces sized to a fraction of
    `max_bytes` from the rows read so far), its size checked and `cancelled` asked after each
    piece."""
    piece_bytes = max(_MIN_PIECE_BYTES, max_bytes // _PIECES_PER_LIMIT)
    frames: list[pd.DataFrame] = []
    used = rows = 0
    with reader:
        while True:
            if cancelled():
                raise Cancelled("the client went away; the data set was not stored")
            want = _FIRST_ROWS if not rows else max(1, int(piece_bytes * rows / max(used, 1)))
            try:
                piece = reader.get_chunk(want) if hasattr(reader, "get_chunk") else next(reader)
            except StopIteration:
                break
            frames.append(piece)
            used += frame_bytes(piece)
            rows += len(piece)
            _check_size(used, max_bytes)
    if not frames:  # a header and no rows
        return pd.DataFrame()
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def _read_json_records(path: Path) -> pd.DataFrame:
    """A `.json` file as Ludwig reads it: one array of records (pandas' `read_json`). JSON lines
    under a `.json` name get a message that names the right format rather than pandas' own."""
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip()
    if head[:1] == b"{" and b"\n{" in head:
        raise InvalidArgument(
            "a .json data set is one array of records ([{...}, {...}]); this file has one object "
            "a line: name it .jsonl or give the format jsonl",
            field="dataset",
        )
    return pd.read_json(path, dtype=False)


def _check_header(path: Path, sep: str) -> None:
    """pandas renames a repeated column to `name.1` without a word; a repeated name is a
    mistake the uploader should hear about, not a column to guess at. One pass (counting each
    name against every other took minutes for 100,000 columns), before pandas parses anything."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh, delimiter=sep), [])
    except csv.Error as exc:
        raise InvalidArgument(f"cannot read the header: {exc}", field="dataset") from None
    if len(header) > MAX_COLUMNS:
        raise ResourceExhausted(
            f"the data set has {len(header)} columns; the limit is {MAX_COLUMNS}",
            field="dataset",
            reason="TOO_MANY_COLUMNS",
        )
    counts = Counter(h.strip() for h in header)
    repeated = sorted(name for name, n in counts.items() if n > 1 and name)
    if repeated:
        raise InvalidArgument(
            f"column names appear more than once: {', '.join(repeated)}", field="dataset"
        )


class DatasetStore:
    """Content-addressed data sets under `<root>`."""

    def __init__(
        self,
        root: Path,
        max_bytes: int = DEFAULT_MAX_DATASET_BYTES,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        """`max_bytes`: largest upload; `max_frame_bytes`: largest table parsed; `cache_bytes`:
        memory for parsed tables kept between jobs."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        # Partial uploads and stagings of a crashed process: never renamed, so never visible.
        for leftover in [*self.root.glob(".upload-*"), *self.root.glob(".staging-*")]:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        self.max_bytes = max_bytes
        self.max_frame_bytes = max_frame_bytes
        self._lock = threading.Lock()
        self._frames = FrameCache(cache_bytes)

    def put(
        self,
        chunks: Iterable[bytes],
        filename: str,
        fmt: str | None = None,
        cancelled: Callable[[], bool] = _never,
        principal: Principal | None = None,
    ) -> DatasetRecord:
        """Store an upload as a data set of `principal` (default: the caller being served);
        `cancelled()` true (the client went away) stops the parse."""
        owner = (principal or current_principal()).name
        fmt = check_format(fmt) if fmt else guess_format(filename)
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".upload-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise ResourceExhausted(
                            f"data set larger than the limit of {self.max_bytes} bytes",
                            field="chunk",
                        )
                    digest.update(chunk)
                    out.write(chunk)
            if size == 0:
                raise InvalidArgument("the data set is empty", field="dataset")
            sha = digest.hexdigest()
            # The format is part of the identity: the same bytes read as tsv are another table.
            # So is the owner (none without tokens: the ids of a single-user trainer stay).
            identity = f"{owner}\n{sha}:{fmt}" if owner else f"{sha}:{fmt}"
            ds_id = f"ds-{hashlib.sha256(identity.encode()).hexdigest()[:20]}"
            final = self.root / ds_id
            if (final / "meta.json").exists():
                return self.get(ds_id, principal)
            df = read_table(tmp, fmt, self.max_frame_bytes, cancelled)
            if len(df) == 0:
                raise InvalidArgument("the data set has no rows", field="dataset")
            record = DatasetRecord(
                ds_id, Path(filename).name, fmt, len(df), list(df.columns), size, sha, owner
            )
            staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".staging-"))
            shutil.move(str(tmp), staging / f"data.{fmt}")
            (staging / "meta.json").write_text(json.dumps(asdict(record)))
            with self._lock:
                if final.exists():
                    shutil.rmtree(staging)
                else:
                    os.replace(staging, final)
            log.info("dataset stored", dataset_id=ds_id, rows=record.rows, bytes=size)
            return record
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, path: Path) -> DatasetRecord:
        with open(path, "rb") as fh:
            return self.put(iter(lambda: fh.read(1 << 20), b""), path.name)

    def get(self, ds_id: str, principal: Principal | None = None) -> DatasetRecord:
        """The data set's record if `principal` (default: the caller being served) may see it;
        NOT_FOUND otherwise, word for word as for a missing id."""
        meta = self._dir(ds_id) / "meta.json"
        record = DatasetRecord(**json.loads(meta.read_text())) if meta.exists() else None
        if record is None or not (principal or current_principal()).owns(record.owner):
            raise NotFound(f"no data set {ds_id!r}", field="dataset_id")
        return record

    def load(self, ds_id: str, principal: Principal | None = None) -> pd.DataFrame:
        """The parsed table (kept in the bounded cache: data sets are immutable), if `principal`
        may see it; a shallow copy: pandas copies on write, so a caller's changes never reach
        the cache, and no caller pays for a deep copy it does not need."""
        record = self.get(ds_id, principal)
        cached = self._frames.get(ds_id)
        if cached is not None:
            self._used(ds_id)
            return cached.copy(deep=False)
        self._used(ds_id)
        path = self._dir(ds_id) / f"data.{record.format}"
        df = read_table(path, record.format, self.max_frame_bytes)
        self._frames.put(ds_id, df)
        return df.copy(deep=False)

    def _used(self, ds_id: str) -> None:
        """meta.json's mtime is the data set's last use, for the retention (dataset_retention)."""
        try:
            os.utime(self._dir(ds_id) / "meta.json")
        except FileNotFoundError:
            pass

    def forget(self, ds_id: str) -> None:
        """Drop a deleted data set's parsed table from memory."""
        self._frames.discard(ds_id)

    def _dir(self, ds_id: str) -> Path:
        if not ds_id or "/" in ds_id or "\\" in ds_id or ds_id.startswith("."):
            raise InvalidArgument(f"malformed data set id {ds_id[:64]!r}", field="dataset_id")
        check_path_text(ds_id, "dataset_id")
        return self.root / ds_id
