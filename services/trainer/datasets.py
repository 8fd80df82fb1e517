"""Data sets stored by content hash.

A client streams a file's bytes; they land in a temporary file, are parsed once to check that
they are a readable table (and to count rows and columns), then renamed into
`<data_dir>/datasets/<id>/` so a crash never leaves a half-stored data set. The id derives from the
sha256 of the bytes and the format they are read as: uploading the same file twice stores it once,
and the same bytes uploaded as another format (a `.csv` renamed `.tsv`) are that other table.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from zipfile import BadZipFile

import pandas as pd
import structlog

from tunewire.errors import InvalidArgument, NotFound, ResourceExhausted
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


@dataclass
class DatasetRecord:
    id: str
    filename: str
    format: str
    rows: int
    columns: list[str]
    size_bytes: int
    sha256: str


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


def read_table(path: Path, fmt: str) -> pd.DataFrame:
    """Parse a stored file; malformed content is an InvalidArgument that says what and where."""
    sep = {"csv": None, "tsv": "\t"}.get(fmt)
    try:
        if fmt == "csv":
            sep = sniff_separator(path)
            df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8")
        elif fmt == "tsv":
            df = pd.read_csv(
                path, sep="\t", dtype=str, keep_default_na=False, encoding="utf-8", quoting=3
            )
        elif fmt == "json":
            df = _read_json_records(path)
        elif fmt == "jsonl":
            df = pd.read_json(path, lines=True, dtype=False)
        elif fmt == "parquet":
            df = pd.read_parquet(path)
        elif fmt == "excel":
            df = pd.read_excel(path, engine="openpyxl")
        elif fmt == "feather":
            df = pd.read_feather(path)
        elif fmt == "orc":
            df = pd.read_orc(path)
        else:
            raise InvalidArgument(f"unknown format {fmt!r}", field="metadata.format")
    except InvalidArgument:
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
    if sep is not None:
        _check_header(path, sep)
    df.columns = [str(c).strip() for c in df.columns]
    # An unnamed leading index column (pandas' to_csv default) is not a feature.
    if len(df.columns) and df.columns[0] in ("", "Unnamed: 0"):
        df = df.drop(columns=df.columns[0])
    return df


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
    mistake the uploader should hear about, not a column to guess at."""
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh, delimiter=sep), [])
    names = [h.strip() for h in header]
    repeated = sorted({n for n in names if names.count(n) > 1 and n})
    if repeated:
        raise InvalidArgument(
            f"column names appear more than once: {', '.join(repeated)}", field="dataset"
        )


class DatasetStore:
    """Content-addressed data sets under `<root>`."""

    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_DATASET_BYTES) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        # Partial uploads and stagings of a crashed process: never renamed, so never visible.
        for leftover in [*self.root.glob(".upload-*"), *self.root.glob(".staging-*")]:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._frames: dict[str, pd.DataFrame] = {}

    def put(self, chunks: Iterable[bytes], filename: str, fmt: str | None = None) -> DatasetRecord:
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
            ds_id = f"ds-{hashlib.sha256(f'{sha}:{fmt}'.encode()).hexdigest()[:20]}"
            final = self.root / ds_id
            if (final / "meta.json").exists():
                return self.get(ds_id)
            df = read_table(tmp, fmt)
            if len(df) == 0:
                raise InvalidArgument("the data set has no rows", field="dataset")
            record = DatasetRecord(
                ds_id, Path(filename).name, fmt, len(df), list(df.columns), size, sha
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

    def get(self, ds_id: str) -> DatasetRecord:
        meta = self._dir(ds_id) / "meta.json"
        if not meta.exists():
            raise NotFound(f"no data set {ds_id!r}", field="dataset_id")
        return DatasetRecord(**json.loads(meta.read_text()))

    def load(self, ds_id: str) -> pd.DataFrame:
        """The parsed table (memoised: data sets are immutable)."""
        with self._lock:
            if ds_id in self._frames:
                return self._frames[ds_id].copy()
        record = self.get(ds_id)
        df = read_table(self._dir(ds_id) / f"data.{record.format}", record.format)
        with self._lock:
            self._frames[ds_id] = df
        return df.copy()

    def _dir(self, ds_id: str) -> Path:
        if not ds_id or "/" in ds_id or "\\" in ds_id or ds_id.startswith("."):
            raise InvalidArgument(f"malformed data set id {ds_id[:64]!r}", field="dataset_id")
        check_path_text(ds_id, "dataset_id")
        return self.root / ds_id


def table_bytes(df: pd.DataFrame) -> bytes:
    """Serialise a frame as CSV (for tests and the SDK's in-memory uploads)."""
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    return buf.getvalue().encode()
