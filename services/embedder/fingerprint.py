"""The encoder fingerprint and the cache key derived from it.

The fingerprint is a sha256 over everything that determines a vector besides the text: the
weights (Hub commit, or a content hash of a local directory's weight files), the tokenizer files,
and the embedding settings (pooling, layer, max length, normalisation, compute and output dtype,
instruction). Any change gives different keys, so the cache can never serve a stale vector.

Hashing a local checkpoint reads every weight byte, so it is memoised by (path, size, mtime): a
request pays for it once per file version, not once per call.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import structlog

from services.embedder.source import ModelSource
from tunewire.wire import embed_request

log = structlog.get_logger(__name__)

WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
# Files that define how text becomes ids (and the model config, which shapes the weights' meaning).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
)
_CHUNK = 8 * 1024 * 1024

_memo: dict[tuple[str, int, int], str] = {}
_memo_lock = threading.Lock()


@dataclass(frozen=True)
class EmbeddingSettings:
    """The normalised settings an embedding depends on (after defaults are resolved)."""

    pooling: str
    layer: int  # 0 = last hidden state; otherwise an index into hidden_states
    max_length: int  # effective truncation, never 0
    normalize: bool
    compute_dtype: str  # torch dtype the model ran in
    dtype: str  # output dtype: float32 | float16
    instruction: str


class HashMemo(Protocol):
    """Content hashes kept across processes (shapes.FileHashes), by `file_key`."""

    def get(self, key: bytes) -> str | None: ...

    def put(self, key: bytes, digest: str) -> None: ...


def file_key(path: Path, st: os.stat_result) -> bytes:
    """A file's version as a persistent hash memo names it: its real path, device, inode, size
    and modification time (ns). Writers of weights write a new file and rename it over the old
    one (a new inode); a file rewritten in place changes its mtime."""
    version = f"{path}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}"
    return hashlib.sha256(b"filehash\0" + version.encode()).digest()


def file_sha256(path: Path, memo: HashMemo | None = None) -> str:
    """Content hash of one file, memoised by (path, size, mtime_ns) in this process and, with
    `memo`, by `file_key` across processes (hashing MiniLM's 90 MB was ~0.15 s of every fresh
    process that opened it)."""
    real = path.resolve()
    st = real.stat()
    key = (str(real), st.st_size, st.st_mtime_ns)
    with _memo_lock:
        value = _memo.get(key)
    stored = memo.get(file_key(real, st)) if memo is not None else None
    value = value or stored
    if value is None:
        digest = hashlib.sha256()
        with open(real, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
        value = digest.hexdigest()
        log.debug("hashed weight file", path=str(path), bytes=st.st_size)
    if memo is not None and stored is None:
        memo.put(file_key(real, st), value)
    with _memo_lock:
        _memo[key] = value
    return value


def weights_identity(source: ModelSource, memo: HashMemo | None = None) -> str:
    """Hub: the commit. Local: names, sizes and contents of the weight files plus config.json."""
    if source.commit:
        return f"hub:{source.hub_id}@{source.commit}"
    digest = hashlib.sha256()
    files = sorted({p for pattern in WEIGHT_PATTERNS for p in source.path.glob(pattern)})
    for path in [*files, source.path / "config.json"]:
        if path.is_file():
            digest.update(
                f"{path.name}\0{path.stat().st_size}\0{file_sha256(path, memo)}\n".encode()
            )
    return f"local:{digest.hexdigest()}"


def tokenizer_identity(path: Path) -> str:
    """Hash of the tokenizer files present in the model directory (they are small)."""
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        file = path / name
        if file.is_file():
            digest.update(name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


@functools.lru_cache(maxsize=1024)
def fingerprint(weights: str, tokenizer: str, settings: EmbeddingSettings) -> str:
    """The hex sha256 that names an encoder configuration; memoised, as every request needs it."""
    payload = {"weights": weights, "tokenizer": tokenizer, **asdict(settings)}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def cache_keys(fingerprint_hex: str, texts: Iterable[str]) -> list[bytes]:
    """The 32-byte key of each text, sha256(fingerprint + NUL + text), with the per-key work cut
    to what depends on the text: a request's first read from the cache computes thousands. The
    hash's state after the fingerprint (its first 64-byte block and the NUL) is computed once
    and copied for each text: ~20 % less than hashing fingerprint + text anew, the same keys."""
    copy = hashlib.sha256(fingerprint_hex.encode() + b"\0").copy
    keys = []
    for text in texts:
        digest = copy()
        digest.update(text.encode("utf-8"))
        keys.append(digest.digest())
    return keys


def loaded_key(weights: str, tokenizer: str) -> bytes:
    """32-byte cache key that marks an encoder's files (by their content identities) as having
    loaded in this cache's embedder once; distinct from every vector and whole-answer key."""
    return hashlib.sha256(f"loaded\0{weights}\0{tokenizer}".encode()).digest()


def cache_key(fingerprint_hex: str, text: str) -> bytes:
    """`cache_keys` of one text."""
    return cache_keys(fingerprint_hex, [text])[0]


def encode_texts(texts: Sequence[str]) -> bytes:
    """`texts` in the wire form the SDK sends them in (`tunewire.wire.embed_request`: joined by
    NUL in one field, or a record per text), the form `batch_key` hashes for a caller in the
    same process. The servicer takes it straight from a request's bytes instead."""
    return embed_request(None, texts).SerializeToString()


def batch_key(fingerprint_hex: str, texts_wire: bytes | memoryview) -> bytes:
    """32-byte key of a whole request's answer: sha256 over the fingerprint and the request's
    texts in their wire form (`encode_texts`), which names the exact list of texts (a count and
    NUL separators, or a length per record) and which a server hashes without turning the texts
    into strings. Distinct from every `cache_key` (and from the NUL/JSON-joined keys of earlier
    versions)."""
    digest = hashlib.sha256(b"batch\0" + fingerprint_hex.encode() + b"\0pb\0")
    digest.update(texts_wire)
    return digest.digest()
