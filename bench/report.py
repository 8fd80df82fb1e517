"""What a benchmark does with its result table: print it, and append it to a results file when
the run is asked to record (`--record FILE`), so every bench writes its results the same way."""

from __future__ import annotations

from pathlib import Path


def publish(lines: list[str], record: Path | None) -> None:
    """Print the table's lines; append them, then a blank line, to `record` when one is given."""
    text = "\n".join(lines)
    print(text)
    if record:
        with open(record, "a") as fh:
            fh.write(text + "\n\n")
