"""What opening an encoder's files said, kept in the embedding cache for the next process:
their shape (model type, width, layers, length limit) by the identities of the files it was read
from, and the weight files' content hashes by file version (fingerprint.file_key). A process that
opens an encoder it opened before (the CLI's embedded services, run again on the same
`--data_dir`) then describes it without importing transformers, reading its config and tokenizer
or hashing its weights: a job whose texts are all cached never loads the encoder stack at all.

The key holds the weights' and tokenizer's content identities (fingerprint.py; config.json is
part of the weights' identity) and transformers' version, which decides how a config and a
tokenizer are read: any change to either reads them again."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from importlib.metadata import version

import structlog

from services.embedder.cache import EmbeddingCache
from services.embedder.encoder import EncoderShape
from tunewire.errors import ResourceExhausted

log = structlog.get_logger(__name__)


def shape_key(weights: str, tokenizer: str) -> bytes:
    """32-byte cache key of an encoder's shape; distinct from every vector, answer and marker."""
    transformers = version("transformers")
    return hashlib.sha256(f"shape\0{transformers}\0{weights}\0{tokenizer}".encode()).digest()


class EncoderShapes:
    """EncoderShape by (weights identity, tokenizer identity), in `cache`."""

    def __init__(self, cache: EmbeddingCache) -> None:
        self.cache = cache

    def get(self, weights: str, tokenizer: str) -> EncoderShape | None:
        raw = self.cache.get_record(shape_key(weights, tokenizer))
        if raw is None:
            return None
        try:
            return EncoderShape(**json.loads(raw))
        except (ValueError, TypeError):  # written by another version: read the files again
            return None

    def put(self, weights: str, tokenizer: str, shape: EncoderShape) -> None:
        value = json.dumps(dataclasses.asdict(shape), sort_keys=True).encode()
        try:
            self.cache.put_many([(shape_key(weights, tokenizer), value)])
        except ResourceExhausted as exc:  # an optimisation only
            log.warning("encoder shape not stored", error=exc.message)


class FileHashes:
    """Weight files' content hashes by `fingerprint.file_key`, in `cache`
    (a fingerprint.HashMemo)."""

    def __init__(self, cache: EmbeddingCache) -> None:
        self.cache = cache

    def get(self, key: bytes) -> str | None:
        raw = self.cache.get_record(key)
        return raw.decode() if raw is not None and len(raw) == 64 else None

    def put(self, key: bytes, digest: str) -> None:
        try:
            self.cache.put_many([(key, digest.encode())])
        except ResourceExhausted as exc:  # an optimisation only
            log.warning("weight file hash not stored", error=exc.message)
