"""Texts being computed right now, by cache key, so that concurrent requests compute each once.

The cache answers texts computed before a request arrived; this answers texts another request is
computing while this one arrives (16 clients streaming overlapping data sets, or consecutive
requests of one stream worked on at once). The first request to miss a key owns it and computes
it; later ones wait for its vector. If the owner fails or its client goes away, the waiters get
no vector and compute the text themselves, so one client's cancel never fails another's call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from tunewire.errors import Cancelled


class Flight:
    """One key's computation: set once with a vector, or abandoned (vector None)."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self.vector: np.ndarray | None = None

    def wait(self, cancelled: Callable[[], bool]) -> np.ndarray | None:
        """The vector, or None when the owner gave up; Cancelled if our own client left."""
        while not self._done.wait(0.05):
            if cancelled():
                raise Cancelled("the client went away while waiting for shared texts")
        return self.vector

    def _finish(self, vector: np.ndarray | None) -> None:
        self.vector = vector
        self._done.set()


class InFlight:
    """The keys being computed, process-wide; `claim`, then exactly one `release` per claim."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[bytes, Flight] = {}

    def claim(self, keys: list[bytes]) -> tuple[list[int], list[tuple[int, Flight]]]:
        """Positions of `keys` this caller now owns, and (position, flight) of those another
        caller is computing."""
        owned: list[int] = []
        waiting: list[tuple[int, Flight]] = []
        with self._lock:
            for i, key in enumerate(keys):
                flight = self._flights.get(key)
                if flight is None:
                    self._flights[key] = Flight()
                    owned.append(i)
                else:
                    waiting.append((i, flight))
        return owned, waiting

    def release(self, keys: list[bytes], vectors: np.ndarray | None) -> None:
        """Hand owned keys' vectors to their waiters (None: computing them failed)."""
        with self._lock:
            flights = [self._flights.pop(key) for key in keys]
        for i, flight in enumerate(flights):
            flight._finish(None if vectors is None else vectors[i])

    def __len__(self) -> int:
        with self._lock:
            return len(self._flights)
