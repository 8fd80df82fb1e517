"""argparse as a Ludwig user meets it: "did you mean" for a mistyped command or flag, every
default in the help, Ludwig's `-p true|false` booleans and logging levels."""

from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import sys
from collections.abc import Callable

LOGGING_LEVELS = ("critical", "error", "warning", "info", "debug", "notset")


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to every flag's help, also to flags given without help text."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or isinstance(
            action, argparse._HelpAction
        ):
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                if isinstance(action, (argparse._StoreTrueAction,)):
                    return f"{text} (default: off)".strip()
                if "default:" not in text:
                    return f"{text} (default: none)".strip()
            return text
        if "default:" in text or "%(default)" in text:
            return text
        return f"{text} (default: %(default)s)".strip()


def suggest(word: str, candidates: list[str]) -> str:
    """' (did you mean X?)' for the closest candidate, or ''."""
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors name the closest command or flag. `epilog_later`, when
    set, makes the epilog when help is shown: an epilog that imports modules to list their
    flags (serve's) then costs nothing to a command that never shows it."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)
        self.epilog_later: Callable[[], str] | None = None

    def format_help(self) -> str:
        if self.epilog_later is not None:
            self.epilog = self.epilog_later()
        return super().format_help()

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {self._hint(message)}\n")

    def _hint(self, message: str) -> str:
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            options = re.findall(r"'?([\w.-]+)'?", choice.group(2))
            return message + suggest(choice.group(1), options)
        unknown = re.search(r"unrecognized arguments: (.*)", message)
        if unknown:
            flags = [s for a in self._actions for s in a.option_strings]
            hints = [
                f"{w}{suggest(w.split('=')[0], flags)}"
                for w in unknown.group(1).split()
                if w.startswith("-")
            ]
            if hints:
                return f"unrecognized arguments: {' '.join(hints)}"
        return message


def boolean(text: str) -> bool:
    """Ludwig's booleans on the command line: true/false, yes/no, 1/0."""
    value = text.strip().lower()
    if value in ("true", "yes", "1", "on"):
        return True
    if value in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def flag(*names: str) -> list[str]:
    """Each long flag in Ludwig's underscore spelling plus the dashed one."""
    out: list[str] = []
    for name in names:
        out.append(name)
        if name.startswith("--") and "_" in name:
            out.append(name.replace("_", "-"))
    return out


def add_logging_level(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-l",
        *flag("--logging_level"),
        dest="logging_level",
        default="warning",
        choices=LOGGING_LEVELS,
        type=str.lower,
        help="the level of the services' and the CLI's logs (-v is info)",
    )


def _finite(value):
    """`value` with every NaN or infinity made None: JSON has no NaN (a metric that needs two
    classes is undefined on one), and `--json` output must parse."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_text(value, **kwargs) -> str:
    """JSON for `--json` output and the statistics files: NaN and infinity as null."""
    return json.dumps(_finite(value), allow_nan=False, **kwargs)
