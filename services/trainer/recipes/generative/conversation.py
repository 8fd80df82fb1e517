"""Chat turns in TRL's data set formats, rendered with the tokenizer's chat template.

- `messages`: one column of turns (`[{"role": "user", "content": ...}, {"role": "assistant",
  ...}]`), named as both the input and the output feature. The loss is on the assistant turns
  only (TRL's `assistant_only_loss`), each with the template's end-of-turn marker, so the model
  learns to stop; system and user turns are context.
- conversational `prompt`/`completion`: the prompt's turns are context, the completion's turns
  (or a plain string, as the assistant's answer) are the target.

A cell holds turns when it is a list of objects with `role` and `content` (JSON lines, JSON,
parquet), or such a list as JSON text (a CSV cell). The spans that carry the loss are found by
rendering growing prefixes of the conversation, so any chat template works whose rendering of a
conversation begins with its rendering of every earlier part; one that does not is refused.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

IGNORE = -100
ROLES = ("system", "user", "assistant", "tool")


def turns(value: Any) -> list[dict] | None:
    """The chat turns a cell holds, or None when it holds plain text."""
    if isinstance(value, str):
        text = value.lstrip()
        if not text.startswith("[{"):
            return None
        try:
            value = json.loads(text)
        except ValueError:
            return None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, list) or not value:
        return None
    if not all(isinstance(t, dict) and "role" in t and "content" in t for t in value):
        return None
    for t in value:
        if t["role"] not in ROLES:
            raise ValueError(f"chat turn role {t['role']!r} is not one of {', '.join(ROLES)}")
    return [{"role": t["role"], "content": str(t["content"])} for t in value]


def _template(cfg, tokenizer) -> None:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "the data set holds chat turns (TRL's messages or prompt/completion format) but the "
            "tokenizer has no chat template"
        )
    if cfg.prompt.template is not None:
        raise ValueError(
            "prompt.template cannot fill in chat turns: the chat template renders them; drop "
            "prompt.template"
        )


def _render(tokenizer, messages: list[dict], *, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )


def prompt_text(cfg, messages: list[dict], tokenizer) -> str:
    """What the model continues at prediction time: the conversation up to its last assistant
    answer (the one to predict, when present), with the generation prompt."""
    _template(cfg, tokenizer)
    end = len(messages)
    while end and messages[end - 1]["role"] == "assistant":
        end -= 1
    return _render(tokenizer, messages[:end], generation_prompt=True)


def _completion(value: Any) -> list[dict] | None:
    found = turns(value)
    if found is not None:
        return found
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return [{"role": "assistant", "content": str(value)}]


def sample(cfg, row: dict, tokenizer, limit: int) -> tuple[list[int], list[int]] | None:
    """(input_ids, labels) for a row of chat turns; None when the row is plain text (the
    template path handles it); empty lists when nothing to learn is left after truncation."""
    history = turns(row.get(cfg.input.column))
    if history is None:
        return None
    _template(cfg, tokenizer)
    if cfg.output.column == cfg.input.column:  # TRL's messages format
        messages = history
    else:  # conversational prompt/completion
        completion = _completion(row.get(cfg.output.column))
        if completion is None:
            return [], []
        messages = history + completion
    learn = {
        i
        for i, t in enumerate(messages)
        if t["role"] == "assistant" and (cfg.output.column == cfg.input.column or i >= len(history))
    }
    if not learn:
        raise ValueError(
            f"a conversation in column {cfg.input.column!r} has no assistant turn to learn"
        )
    ids: list[int] = []
    labels: list[int] = []
    done = ""  # the text rendered so far

    def add(text: str, target: bool) -> None:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        ids.extend(piece)
        labels.extend(piece if target else [IGNORE] * len(piece))

    for i in sorted(learn):
        before = _render(tokenizer, messages[:i], generation_prompt=True) if i else ""
        upto = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if not before.startswith(done) or not upto.startswith(before):
            raise ValueError(
                "the tokenizer's chat template renders a conversation differently from its "
                "beginning, so the assistant turns cannot be told apart"
            )
        add(before[len(done) :], False)
        add(upto[len(before) :], True)
        done = upto
    ids, labels = ids[:limit], labels[:limit]
    if all(t == IGNORE for t in labels):
        return [], []
    return ids, labels
