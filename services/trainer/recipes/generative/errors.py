"""The worker's own error: what it reports as FAILED_PRECONDITION rather than INTERNAL."""

from __future__ import annotations


class PreconditionError(RuntimeError):
    """The job cannot run on this machine as configured (missing GPU, package...)."""
