"""Predictions answered in this process, for `serve http --model_path` (Ludwig serve's
one-model server), whose embedder runs in the same process without tokens.

The front door otherwise reaches the embedder over a loopback gRPC call, which cost ~1 ms a
request on a 2-core VM (1.2-1.5 ms against 0.25-0.30 ms called directly, the same warm row):
half of a warm prediction's server time, and the largest part of a cold one's besides MiniLM's
own forward pass. Here the servicer's `PredictRows` is called directly with the request message
the SDK would send, so validation, the head cache, the online prediction and the answer are
the gRPC path's own; what is skipped is the transport and the server's interceptors
(authentication, which an embedder without tokens does not do, and the per-call metrics).
"""

from __future__ import annotations

import structlog

from tunewire.clients.embedder import ludwig_columns, rows_request
from tunewire.errors import Internal, TunewireError

log = structlog.get_logger(__name__)


class _Context:
    """What PredictRows reads of a gRPC servicer context: no metadata (no token), and a caller
    that is there (the HTTP request waits for the answer, as the gRPC client did)."""

    def invocation_metadata(self) -> tuple:
        return ()

    def is_active(self) -> bool:
        return True


class LocalPredictions:
    """`predict(model, columns)` → Ludwig-named output columns, as `EmbedderClient.predict_columns`
    answers them, through an in-process embedder servicer (services/embedder/servicer.py)."""

    def __init__(self, servicer) -> None:
        self._servicer = servicer

    def __call__(self, model: str, columns: dict[str, list]) -> dict[str, list]:
        try:
            response = self._servicer.PredictRows(rows_request(model, columns), _Context())
        except TunewireError:
            raise
        except Exception as exc:  # noqa: BLE001 - what the gRPC server would answer: INTERNAL
            log.exception("online prediction failed", model=model)
            raise Internal(f"{type(exc).__name__}: {exc}") from None
        return ludwig_columns(response)
