"""One lock for building torch modules in a process that serves many callers.

transformers skips weight initialisation while it loads a model by swapping `torch.nn.init`'s
functions for no-ops, process-wide, and putting them back afterwards (`no_init_weights`). Two
loads in two threads put back each other's no-ops: from then on every module built in the process
keeps uninitialised memory (a fresh LoRA or task head starts at zero and never learns). A module
built in another thread during a load is silently uninitialised too. So every model load and every
module construction in a server process (embedder, trainer, online prediction) holds this lock;
the generative worker is a process of its own and needs none.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_LOCK = threading.RLock()  # re-entrant: a load may build a head that builds modules


@contextmanager
def building_modules() -> Iterator[None]:
    """Hold the process's module-building lock (also usable as a decorator)."""
    with _LOCK:
        yield
