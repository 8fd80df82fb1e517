"""Ludwig's few-shot retrieval (`prompt.retrieval`): each row's prompt gets `k` examples from the
training split in its `{__context__}`.

It runs in the trainer process, before the worker's inputs are written: the embedder client
lives here (the worker imports no service code and may run where no embedder is reachable), the
examples are the same for every rank, and Ludwig too retrieves at preprocessing. Each split's
rows then carry their context in a `__context__` column, which `data.render_prompt` places like
any other template field, so the worker, evaluation and generation just see prompts.

The pool is the training split's input and output, each example a dict keyed by feature name,
and a context is that list as Python prints it: `[{'question': ..., 'answer': ...}, ...]`,
Ludwig's shape. `random` draws `k` distinct examples, seeded by the job's seed and the row's
input; `semantic` ranks by cosine similarity of vectors the embedder computes (and caches: a
second job over the same rows computes nothing). As in Ludwig, a training row may be given
itself. The pool (and the encoder's fingerprint) is written into the artifact, so predict
retrieves from the same rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from services.trainer.recipes.generative import conversation
from tunewire.config.llm import LlmConfig
from tunewire.encoder_spec import EncoderSpec
from tunewire.errors import FailedPrecondition
from tunewire.model_card import LOCAL_PREFIX, RETRIEVAL_POOL_FILE
from tunewire.model_names import pooling_defaults

CONTEXT = "__context__"  # the column, and the template field, that holds a row's examples
POOL_FILE = RETRIEVAL_POOL_FILE
META_FILE = "retrieval.json"
_QUERY_CHUNK = 256  # queries ranked per matrix product: bounds memory on large pools


@dataclass
class Pool:
    """The examples a prompt may be given, in training-split order."""

    examples: list[dict]  # {input feature name: value, output feature name: value}
    keys: list[str]  # what semantic retrieval embeds for each: see `example_key`


@dataclass
class EmbedTally:
    texts: int = 0
    cache_hits: int = 0
    cache_misses: int = 0


def example_key(cfg: LlmConfig, value: Any) -> str:
    """A row as semantic retrieval embeds it: its input as the JSON object {name: value}, the
    text Ludwig indexes the training rows by (queries are embedded the same way here)."""
    return json.dumps({cfg.input.name: value})


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def build_pool(cfg: LlmConfig, train: pd.DataFrame) -> Pool:
    """The training split's rows with both an input and an output, as examples."""
    in_col, out_col = cfg.input.column, cfg.output.column
    if in_col not in train.columns:
        raise FailedPrecondition(
            f"prompt.retrieval keys its examples by the input feature's column {in_col!r}, "
            "which the training split lacks",
            field="input_features[0].column",
        )
    examples, keys = [], []
    for row in train[list(dict.fromkeys((in_col, out_col)))].to_dict("records"):
        value, label = row[in_col], row.get(out_col)
        if _missing(value) or _missing(label):
            continue
        if conversation.turns(value) is not None:
            raise FailedPrecondition(
                "prompt.retrieval places examples with a prompt template; chat-turn data is "
                "rendered with the chat template instead, so it takes no retrieval",
                field="prompt.retrieval.type",
            )
        examples.append({cfg.input.name: value, cfg.output.name: label})
        keys.append(example_key(cfg, value))
    k = cfg.prompt.retrieval.k
    if len(examples) < k:
        raise FailedPrecondition(
            f"prompt.retrieval.k is {k} but the training split has {len(examples)} rows with "
            "an input and an output to draw examples from",
            field="prompt.retrieval.k",
        )
    return Pool(examples, keys)


def encoder_spec(model_name: str) -> EncoderSpec:
    """How semantic retrieval asks the embedder for vectors: as sentence-transformers runs the
    model (its pooling, normalisation and max length, where its files say so), which is how
    Ludwig encodes; mean pooling over the model's limit otherwise."""
    st = pooling_defaults(model_name)
    return EncoderSpec(
        model=model_name, pooling=st.pooling, normalize=st.normalize, max_length=st.max_seq_length
    )


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


class RandomRetriever:
    """`k` distinct examples per row, drawn from a generator seeded by (seed, the row's key): a
    row gets the same examples wherever it appears, whatever else is in its batch."""

    def __init__(self, pool: Pool, k: int, seed: int) -> None:
        self.size, self.k, self.seed = len(pool.examples), k, seed & (2**63 - 1)

    def nearest(self, keys: list[str]) -> list[list[int]]:
        return [
            np.random.default_rng([self.seed, _digest(key)])
            .choice(self.size, self.k, replace=False)
            .tolist()
            for key in keys
        ]


class SemanticRetriever:
    """The `k` examples nearest each row by cosine similarity, nearest first (ties: the earlier
    training row). The pool is embedded once, through the embedder's cache; a query whose key is
    a pool key (a training row) reuses that vector."""

    def __init__(
        self,
        pool: Pool,
        k: int,
        embedder,
        spec: EncoderSpec,
        cancelled: Callable[[], bool] | None = None,
    ) -> None:
        self.k, self.embedder, self.spec, self.cancelled = k, embedder, spec, cancelled
        self.tally = EmbedTally()
        self.fingerprint = ""
        self._known: dict[str, np.ndarray] = {}
        self.vectors = self._embed(pool.keys)

    def _embed(self, keys: list[str]) -> np.ndarray:
        new = list(dict.fromkeys(k for k in keys if k not in self._known))
        if new:
            result = self.embedder.embed_many(new, self.spec, cancelled=self.cancelled)
            self.fingerprint = result.fingerprint or self.fingerprint
            self.tally.texts += len(new)
            self.tally.cache_hits += result.cache_hits
            self.tally.cache_misses += result.cache_misses
            self._known.update(zip(new, _unit(result.vectors)))
        return np.stack([self._known[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)

    def nearest(self, keys: list[str]) -> list[list[int]]:
        if not keys:
            return []
        queries = self._embed(keys)
        out: list[list[int]] = []
        for start in range(0, len(queries), _QUERY_CHUNK):
            sims = queries[start : start + _QUERY_CHUNK] @ self.vectors.T
            order = np.argsort(-sims, axis=1, kind="stable")[:, : self.k]
            out.extend(order.tolist())
        return out


@dataclass
class FewShot:
    """A job's retrieval: the pool, how it ranks, and what it took."""

    cfg: LlmConfig
    pool: Pool
    retriever: RandomRetriever | SemanticRetriever
    spec: EncoderSpec | None = None

    def contexts(self, df: pd.DataFrame) -> list[str]:
        """Each row's `{__context__}` text: its examples as Ludwig prints them."""
        fill = self.cfg.input.preprocessing.fill_value
        values = df[self.cfg.input.column].tolist()
        keys = [example_key(self.cfg, fill if _missing(v) else v) for v in values]
        return [str([self.pool.examples[i] for i in idx]) for idx in self.retriever.nearest(keys)]

    def apply(self, df: pd.DataFrame | None) -> pd.DataFrame | None:
        """`df` with its rows' contexts in the `__context__` column."""
        if df is None or not len(df):
            return df
        if self.cfg.input.column not in df.columns:
            raise FailedPrecondition(
                f"prompt.retrieval finds examples by the input column {self.cfg.input.column!r}, "
                "which the data set lacks",
                field="input_features[0].column",
            )
        out = df.copy()
        out[CONTEXT] = self.contexts(df)
        return out

    def summary(self) -> str:
        r = self.cfg.prompt.retrieval
        text = f"prompt.retrieval: {r.type}, k={r.k}, over {len(self.pool.examples)} training rows"
        if isinstance(self.retriever, SemanticRetriever):
            t = self.retriever.tally
            text += (
                f" (encoder {r.model_name}: {t.texts} texts embedded, {t.cache_hits} cache hits, "
                f"{t.cache_misses} computed)"
            )
        return text

    def save(self, artifact_dir: Path) -> None:
        """The pool and how it was embedded, beside the artifact's resolved config."""
        pd.DataFrame(self.pool.examples).to_parquet(artifact_dir / POOL_FILE, index=False)
        meta = {"type": self.cfg.prompt.retrieval.type, "rows": len(self.pool.examples)}
        if isinstance(self.retriever, SemanticRetriever):
            meta["encoder"] = asdict(self.spec) if self.spec else None
            meta["fingerprint"] = self.retriever.fingerprint
        (artifact_dir / META_FILE).write_text(json.dumps(meta, indent=2))


def prepare(
    cfg: LlmConfig,
    train: pd.DataFrame,
    embedder: Callable[[], Any] | Any,
    cancelled: Callable[[], bool] | None = None,
) -> FewShot | None:
    """The job's retrieval over its training split (None without `prompt.retrieval`).
    `embedder`: the client, or a function that makes it (asked for by semantic retrieval only)."""
    r = cfg.prompt.retrieval
    if r.type is None:
        return None
    pool = build_pool(cfg, train)
    return _retrieval(cfg, pool, embedder, cancelled)


def _retrieval(
    cfg: LlmConfig,
    pool: Pool,
    embedder,
    cancelled,
    fingerprint: str | None = None,
    spec: EncoderSpec | None = None,
) -> FewShot:
    """`fingerprint` and `spec`: an artifact's, which the encoder must still match."""
    r = cfg.prompt.retrieval
    if r.type == "random":
        return FewShot(cfg, pool, RandomRetriever(pool, r.k, cfg.seed))
    client = embedder() if callable(embedder) else embedder
    if client is None:
        raise FailedPrecondition(
            "semantic retrieval embeds through the embedder, and this trainer has none "
            "configured (start it with --embedder)",
            field="prompt.retrieval.model_name",
        )
    spec = spec or encoder_spec(str(r.model_name))
    retriever = SemanticRetriever(pool, r.k, client, spec, cancelled)
    if fingerprint and retriever.fingerprint and retriever.fingerprint != fingerprint:
        # Same name, other weights or tokenizer: the stored examples would be ranked otherwise.
        raise FailedPrecondition(
            f"the retrieval encoder {r.model_name!r} now has fingerprint "
            f"{retriever.fingerprint[:12]}, the artifact's examples were ranked with "
            f"{fingerprint[:12]}",
            field="prompt.retrieval.model_name",
        )
    return FewShot(cfg, pool, retriever, spec)


def load(
    cfg: LlmConfig,
    artifact_dir: Path,
    embedder: Callable[[], Any],
    model_names: Mapping[str, str] | None = None,
) -> FewShot | None:
    """The retrieval an artifact was made with (None without `prompt.retrieval`); refused
    clearly when the artifact lacks its pool. `model_names` (`--model NAME=PATH`) finds an
    encoder that was a local path where the model was trained (`<local>/NAME` from the Hub)."""
    if cfg.prompt.retrieval.type is None:
        return None
    pool_path, meta_path = artifact_dir / POOL_FILE, artifact_dir / META_FILE
    if not pool_path.exists() or not meta_path.exists():
        raise FailedPrecondition(
            f"this model was configured with prompt.retrieval ({cfg.prompt.retrieval.type}) but "
            f"its artifact lacks {POOL_FILE} and {META_FILE}, the training rows its prompts "
            "take examples from",
            field="model",
        )
    meta = json.loads(meta_path.read_text())
    frame = pd.read_parquet(pool_path)
    examples = frame.to_dict("records")
    keys = [example_key(cfg, e[cfg.input.name]) for e in examples]
    spec = EncoderSpec(**meta["encoder"]) if meta.get("encoder") else None
    if spec is not None:
        spec = replace(spec, model=_named_model(spec.model, model_names or {}))
    return _retrieval(cfg, Pool(examples, keys), embedder, None, meta.get("fingerprint"), spec)


def _named_model(model: str, names: Mapping[str, str]) -> str:
    """An encoder path as the Hub shows it (`<local>/NAME`: the server's paths never reach the
    Hub) is the encoder registered here as NAME; anything else is itself."""
    if not model.startswith(LOCAL_PREFIX):
        return model
    name = model[len(LOCAL_PREFIX) :]
    if name not in names:
        raise FailedPrecondition(
            f"the artifact's retrieval encoder was a local path where it was trained ({model}); "
            f"start the trainer with --model {name}=PATH naming that encoder",
            field="model",
        )
    return names[name]
