"""The command line's exit codes, in one table: 0 done, 1 the work failed (or a service did),
2 the request was wrong (fix the command, the config or the data and run it again), 130 ^C,
141 the reader of the output went away (`| head`), as for a program SIGPIPE ends."""

from __future__ import annotations

from tunewire.errors import TunewireError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_BROKEN_PIPE = 141

# What the caller can fix: the request, not the service, is at fault.
_USAGE_CODES = frozenset(
    {"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "PERMISSION_DENIED", "UNAUTHENTICATED"}
)


def exit_code(err: TunewireError) -> int:
    """The exit code for a command that ended with `err`."""
    return EXIT_USAGE if err.code.name in _USAGE_CODES else EXIT_FAILED
