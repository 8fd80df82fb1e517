"""Nothing in the schema is accepted without effect: every key the llm and ecd schemas accept has
a registered consumer module that reads it (or is registered as inert: only its do-nothing value
is accepted). And docs/ludwig.md is what scripts/gen_ludwig_doc.py writes from the registry."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from tunewire.config import ludwig_keys as K

ROOT = Path(__file__).resolve().parents[1]


@cache
def source(module: str) -> str:
    return (ROOT / module).read_text()


def keys() -> list[str]:
    return [f"{mt}:{path}" for mt in ("llm", "ecd") for path, _ in K.accepted_keys(mt)]


def passed_to_peft(key: str) -> bool:
    """An adapter's own key that PEFT's config class takes under the same name: `adapters.py`
    passes every such field through (PEFT's class must have it)."""
    import peft

    from services.trainer.recipes.generative import adapters
    from tunewire.config import llm

    eva = re.fullmatch(r"llm:adapter\(lora\)\.eva_config\.(\w+)", key)
    if eva is not None:  # adapters.py passes the section whole to PEFT's EvaConfig
        fields = {f.name for f in dataclasses.fields(peft.EvaConfig)}
        assert eva[1] in fields, f"{key}: PEFT's EvaConfig has no {eva[1]!r}"
        return True
    match = re.fullmatch(r"llm:adapter\((\w+)\)\.(\w+)", key)
    if match is None or match[2] in adapters.OURS:
        return False
    peft_class = adapters.SAME_NAMES.get(llm.ADAPTERS[match[1]])
    if peft_class is None:
        return False
    fields = {f.name for f in dataclasses.fields(getattr(peft, peft_class))}
    assert match[2] in fields, f"{key}: PEFT's {peft_class} has no {match[2]!r}"
    return True


@pytest.mark.parametrize("key", keys())
def test_every_accepted_key_has_a_consumer_that_reads_it(key):
    if key in K.INERT or passed_to_peft(key):
        return
    leaf = re.split(r"[.\]]", key.split(":", 1)[1])[-1]
    modules = K.consumers(key)
    assert modules, f"{key}: no consumer registered"
    pattern = re.compile(rf"""(\.{leaf}\b|["']{leaf}["'])""")
    readers = [m for m in modules if pattern.search(source(m))]
    assert readers, f"{key}: none of {modules} reads {leaf!r}"


def test_the_registry_names_only_keys_the_schema_has():
    known = set(keys())
    for table in (K.INERT, K.DIFFERENT, K.EXTENSIONS):
        stale = [k for k in table if k not in known]
        assert not stale, stale


def test_docs_ludwig_md_is_current():
    done = subprocess.run(
        [sys.executable, "scripts/gen_ludwig_doc.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
