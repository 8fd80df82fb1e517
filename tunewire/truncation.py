"""Token ids of texts truncated to `max_length` without tokenising the whole of a long text.

A fast (Rust) tokenizer encodes all of its input and truncates afterwards, at about 50 bytes of
memory a character: 64 texts of 1 MiB took a gigabyte and more for 512 tokens of each (a 59 MiB
Embed request took the embedder from 0.5 to 3.4 GB). Here the tokenizer gets a prefix of
`START_CHARS_PER_TOKEN` characters per token of `max_length` (cut back to the last whitespace, so
no word is split where tokenizers split at whitespace), and truncates exactly. A text whose prefix
gave fewer than `max_length` tokens although more text followed (characters the tokenizer drops,
very long tokens, a fused unknown run) is tokenised again with a prefix `GROWTH` times longer,
alone, until it fills `max_length` or is whole: the ids are those of the whole text, and the
memory is that of the characters needed, one long text at a time. Used by the embedder and by
the trainer's adapted encoders, so both see the same tokens.
"""

from __future__ import annotations

# Characters per token of the first prefix: above English's ~4.5 for BERT-style vocabularies.
START_CHARS_PER_TOKEN = 8
# Characters added to every prefix, for the special tokens and a cut at whitespace.
PREFIX_MARGIN_CHARS = 64
# How much longer each retried prefix is.
GROWTH = 4


def prefix(instruction: str, text: str, chars: int) -> str:
    """The first `chars` characters of `instruction + text` (never building the whole), cut back
    to the last whitespace in its second half when there is more text after it."""
    if len(instruction) >= chars:
        return instruction[:chars]
    rest = chars - len(instruction)
    if len(text) <= rest:
        return instruction + text
    head = text[:rest]
    cut = max(head.rfind(" ", rest // 2), head.rfind("\n", rest // 2))
    return instruction + (head[:cut] if cut > 0 else head)


def first_chars(max_length: int) -> int:
    """Characters of the first prefix for `max_length` tokens."""
    return max_length * START_CHARS_PER_TOKEN + PREFIX_MARGIN_CHARS


def truncated_ids(
    tokenizer, texts: list[str], max_length: int, instruction: str = ""
) -> list[list[int]]:
    """Ids of `instruction + text` for each text, truncated to `max_length` (special tokens
    added, no padding), as `tokenizer(..., truncation=True)` gives them for the whole texts."""
    chars = first_chars(max_length)
    rows = _ids(tokenizer, [prefix(instruction, t, chars) for t in texts], max_length)
    for i, text in enumerate(texts):
        if len(rows[i]) < max_length and len(instruction) + len(text) > chars:
            rows[i] = _refill(tokenizer, instruction, text, max_length, chars)
    return rows


def _ids(tokenizer, inputs: list[str], max_length: int) -> list[list[int]]:
    encoded = tokenizer(
        inputs, truncation=True, max_length=max_length, padding=False, add_special_tokens=True
    )
    return [list(ids) for ids in encoded["input_ids"]]


def _refill(tokenizer, instruction: str, text: str, max_length: int, chars: int) -> list[int]:
    """A prefix of `chars` characters gave fewer than `max_length` tokens: longer prefixes, one
    at a time, until one fills `max_length` or holds the whole text."""
    whole = len(instruction) + len(text)
    while True:
        chars = min(chars * GROWTH, whole)
        ids = _ids(tokenizer, [prefix(instruction, text, chars)], max_length)[0]
        if len(ids) >= max_length or chars >= whole:
            return ids
