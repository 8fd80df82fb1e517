"""Prompt templating, tokenisation and batching for generative fine-tuning.

A sample is `prompt tokens + target tokens + EOS`; labels are -100 on the prompt, so the loss is on
what the model must generate (and on EOS, so it learns to stop). Batches come in two layouts that
give the same loss on the same samples:

- packed: samples laid end to end in rows of `row_len` tokens, position ids restarting at 0 for
  each sample. Attention must not cross samples: transformers turns reset position ids into a
  block-diagonal causal mask (SDPA/eager), and `attention.py`'s varlen kernel gets `cu_seq_lens`.
- padded: one sample per row, right-padded to the longest, with an attention mask.

TRL's data set formats read as they are (`conversation.py`): a `messages` column of chat turns
(name it as both the input and the output feature) is rendered with the tokenizer's chat template
with the loss on the assistant turns only; `prompt`/`completion` columns are a plain input and
output, or chat turns rendered with the template.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pandas as pd
import torch

from services.trainer.recipes.generative import conversation
from tunewire.config.llm import LlmConfig

IGNORE = -100


@dataclass
class Sample:
    input_ids: list[int]
    labels: list[int]

    @property
    def n_target(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


def render_prompt(cfg: LlmConfig, row: dict, tokenizer=None) -> str:
    """The prompt text for one row: the template with {column}s filled, or the raw input; chat
    turns (TRL's formats) rendered with the chat template, up to the assistant's answer."""
    turns = conversation.turns(row.get(cfg.input.column))
    if turns is not None:
        return conversation.prompt_text(cfg, turns, tokenizer)
    # Ludwig builds an input feature that is not a column (e.g. `prompt`) from the template alone.
    text = str(row[cfg.input.column]) if cfg.input.column in row else None
    if text is not None and cfg.input.preprocessing.lowercase:
        text = text.lower()
    template = cfg.prompt.template
    if text is None and cfg.reads_input_column:
        raise ValueError(
            f"the data set lacks the input column {cfg.input.column!r}, which the prompt "
            "places (no template, or {__sample__})"
        )
    if template is None:
        prompt = text
    else:
        values = {k: ("" if v is None else str(v)) for k, v in row.items()}
        if "__context__" not in values and cfg.prompt.retrieval.type is not None:
            # The trainer adds each row's examples before the worker or predict reads it.
            raise ValueError(
                "the prompt places few-shot examples ({__context__}) but this row has none"
            )
        values["__sample__"] = text or ""
        values["__task__"] = cfg.prompt.task or ""
        try:
            prompt = template.format(**values)
        except KeyError as exc:
            raise ValueError(
                f"prompt.template names column {exc.args[0]!r}, which the data set "
                f"lacks (columns: {', '.join(map(str, row))})"
            ) from None
    if cfg.prompt.use_chat_template:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "prompt.use_chat_template is set but the tokenizer has no chat template"
            )
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt


def max_lengths(cfg: LlmConfig, model_max: int) -> tuple[int, int | None, int | None]:
    """(total, prompt, target) token limits from the config and the model's context length."""
    total = cfg.preprocessing.global_max_sequence_length or model_max
    return (
        min(total, model_max),
        cfg.input.preprocessing.max_sequence_length,
        cfg.output.preprocessing.max_sequence_length,
    )


def encode_prompt(tokenizer, prompt: str, limit: int | None) -> list[int]:
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if limit is not None and len(ids) > limit:
        ids = ids[-limit:]  # keep the end: the instruction's last words sit next to the answer
    return ids


def encode_sample(
    tokenizer, prompt: str, target: str, limits: tuple[int, int | None, int | None]
) -> Sample:
    """Tokenise one prompt/target pair.

    Truncation cuts the prompt's start, then the target's end."""
    total, prompt_limit, target_limit = limits
    p = encode_prompt(tokenizer, prompt, prompt_limit)
    t = tokenizer(target, add_special_tokens=False)["input_ids"]
    if target_limit is not None:
        t = t[:target_limit]
    t = t + [tokenizer.eos_token_id]
    if len(p) + len(t) > total:
        keep_prompt = max(total - len(t), min(len(p), total // 2))
        p = p[len(p) - keep_prompt :] if keep_prompt > 0 else []
        t = t[: total - len(p)]
    return Sample(input_ids=p + t, labels=[IGNORE] * len(p) + t)


def build_samples(cfg: LlmConfig, df: pd.DataFrame, tokenizer, model_max: int) -> list[Sample]:
    """Every usable row of `df` as a Sample (rows with a missing input/output dropped or filled)."""
    limits = max_lengths(cfg, model_max)
    samples = []
    for row in df.to_dict("records"):
        chat = conversation.sample(cfg, row, tokenizer, limits[0])
        if chat is not None:
            if chat[0]:  # empty: a missing completion, or nothing to learn left after truncation
                samples.append(Sample(*chat))
            continue
        target = row.get(cfg.output.column)
        if target is None or (isinstance(target, float) and pd.isna(target)):
            if cfg.output.preprocessing.missing_value_strategy == "drop_row":
                continue
            target = cfg.output.preprocessing.fill_value
        value = row.get(cfg.input.column, "")
        if value is None or (isinstance(value, float) and pd.isna(value)):
            if cfg.input.preprocessing.missing_value_strategy == "drop_row":
                continue
            row[cfg.input.column] = cfg.input.preprocessing.fill_value
        target = str(target).lower() if cfg.output.preprocessing.lowercase else str(target)
        samples.append(encode_sample(tokenizer, render_prompt(cfg, row, tokenizer), target, limits))
    return samples


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`, pinned first on CUDA: the copy is then queued and the host moves
    on; from pageable memory it would wait."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@dataclass
class Batch:
    input_ids: torch.Tensor  # [rows, len]
    labels: torch.Tensor  # [rows, len], already shifted: labels[i] is the token after input_ids[i]
    position_ids: torch.Tensor | None  # packed only
    attention_mask: torch.Tensor | None  # padded only
    cu_seqlens: torch.Tensor | None  # packed only: int32 offsets of each sample in the flat batch
    max_seqlen: int
    n_samples: int
    n_real: int  # tokens that belong to a sample (padding excluded)
    # Flat positions that have a label, found on the host when the batch is built: on the GPU
    # `nonzero` would make the host wait for the whole forward before queueing the loss.
    targets: torch.Tensor = field(default=None)  # type: ignore[assignment]
    # Every row is one whole sample, no padding: plain causal attention over each row is exact,
    # and dense causal kernels beat varlen ones (bench/results/generative_train_h200.md).
    dense: bool = False

    def __post_init__(self) -> None:
        if self.targets is None:
            self.targets = (self.labels.reshape(-1) != IGNORE).nonzero().squeeze(1)

    @property
    def n_target(self) -> int:
        return int(self.targets.shape[0])

    def to(self, device: torch.device) -> Batch:
        move = lambda t: None if t is None else to_device(t, device)
        return Batch(
            move(self.input_ids),
            move(self.labels),
            move(self.position_ids),
            move(self.attention_mask),
            move(self.cu_seqlens),
            self.max_seqlen,
            self.n_samples,
            self.n_real,
            move(self.targets),
            self.dense,
        )


def _shifted(sample: Sample) -> list[int]:
    # The model predicts token i+1 at position i; the last position predicts nothing.
    return sample.labels[1:] + [IGNORE]


def collate_padded(samples: list[Sample], pad_id: int) -> Batch:
    """One sample per row, right-padded to the batch's longest."""
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for i, s in enumerate(samples):
        n = len(s.input_ids)
        ids[i, :n] = torch.tensor(s.input_ids)
        labels[i, :n] = torch.tensor(_shifted(s))
        mask[i, :n] = 1
    n_real = int(mask.sum())
    return Batch(
        ids, labels, None, mask, None, width, len(samples), n_real, dense=n_real == mask.numel()
    )


def collate_packed(rows: list[list[Sample]], row_len: int, pad_id: int) -> Batch:
    """Rows of samples laid end to end, padded to `row_len`; position ids restart per sample.

    The tail padding of a row forms one more "sample" (its own segment, all labels ignored), so
    every token belongs to exactly one segment and `cu_seqlens` covers the flat batch."""
    ids = torch.full((len(rows), row_len), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), row_len), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(rows), row_len), dtype=torch.long)
    bounds = [0]
    for r, row in enumerate(rows):
        at = 0
        for s in row:
            n = len(s.input_ids)
            ids[r, at : at + n] = torch.tensor(s.input_ids)
            labels[r, at : at + n] = torch.tensor(_shifted(s))
            pos[r, at : at + n] = torch.arange(n)
            at += n
            bounds.append(r * row_len + at)
        if at < row_len:
            pos[r, at:] = torch.arange(row_len - at)
            bounds.append((r + 1) * row_len)
    cu = torch.tensor(bounds, dtype=torch.int32)
    # max_seqlen: the row length bounds every segment; a constant keeps compiled graphs static.
    dense = all(len(row) == 1 and len(row[0].input_ids) == row_len for row in rows)
    return Batch(
        ids,
        labels,
        pos,
        None,
        cu,
        row_len,
        sum(len(r) for r in rows),
        sum(len(s.input_ids) for r in rows for s in r),
        dense=dense,
    )


def pack_rows(samples: list[Sample], row_len: int) -> list[list[Sample]]:
    """Greedy first-fit-decreasing bins of total length <= row_len (samples are never split)."""
    rows: list[list[Sample]] = []
    space: list[int] = []
    for s in sorted(samples, key=lambda s: -len(s.input_ids)):
        n = len(s.input_ids)
        for i, free in enumerate(space):
            if n <= free:
                rows[i].append(s)
                space[i] -= n
                break
        else:
            rows.append([s])
            space.append(row_len - n)
    return rows


class BatchPlan:
    """The micro-batches of one epoch, the same on every rank and restartable at any step.

    `batch_size` counts examples, as in Ludwig, packed or not: samples are shuffled by (seed,
    epoch) and each micro-batch takes `batch_size` of them per rank. Packed, a rank's share is
    then laid into as few rows of `row_len` as fit it (packing changes the layout of a step, not
    how many examples make it); padded, each is a row. A micro-batch index splits the same way on
    every rank, so resuming at optimizer step k skips exactly k × accumulation micro-batches."""

    def __init__(
        self,
        samples: list[Sample],
        *,
        batch_size: int,
        row_len: int,
        packed: bool,
        pad_id: int,
        world: int,
        rank: int,
        shuffle: bool,
        seed: int,
    ) -> None:
        self.samples, self.batch_size, self.row_len = samples, batch_size, row_len
        self.packed, self.pad_id, self.world, self.rank = packed, pad_id, world, rank
        self.shuffle, self.seed = shuffle, seed

    def epoch(self, epoch: int) -> list[Batch]:
        order = list(self.samples)
        if self.shuffle:
            random.Random(self.seed * 100003 + epoch).shuffle(order)
        per_step = self.batch_size * self.world
        # Every rank must run the same number of micro-batches (collectives in backward): the
        # last, short one is spread over ranks, and dropped only when some rank would get nothing.
        batches = []
        for start in range(0, len(order), per_step):
            chunk = order[start : start + per_step]
            if len(chunk) < self.world:
                break
            batches.append(self._collate(chunk[self.rank :: self.world]))
        return batches

    def _collate(self, samples: list[Sample]) -> Batch:
        if self.packed:
            return collate_packed(pack_rows(samples, self.row_len), self.row_len, self.pad_id)
        return collate_padded(samples, self.pad_id)
