"""Temperature scaling (Guo et al. 2017; Ludwig's `calibration: true`): one scalar T > 0 fitted on
held-out logits by minimising the negative log-likelihood of softmax(logits / T). It changes how
confident the probabilities are, never which class wins, so accuracy is untouched."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


def _nll(logits: torch.Tensor, target: torch.Tensor, binary: bool) -> torch.Tensor:
    if binary:
        return F.binary_cross_entropy_with_logits(logits, target.float())
    return F.cross_entropy(logits, target)


def fit_temperature(logits: torch.Tensor, target: torch.Tensor, binary: bool) -> float:
    """The T that minimises NLL(logits / T); optimised as log T so T stays positive."""
    logits = logits.detach().float()
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = _nll(logits / log_t.exp(), target, binary)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(1e-2, 1e2))


def nll(logits: torch.Tensor, target: torch.Tensor, binary: bool, temperature: float) -> float:
    with torch.no_grad():
        return float(_nll(logits.float() / temperature, target, binary))


def expected_calibration_error(prob: np.ndarray, target: np.ndarray, bins: int = 10) -> float:
    """ECE over equal-width confidence bins: Σ |accuracy − confidence| weighted by bin size.
    `prob` is P(true) [n] for binary or softmax [n, classes]; `target` as encoded."""
    if prob.ndim == 1:
        pred = (prob >= 0.5).astype(np.int64)
        conf = np.where(pred == 1, prob, 1.0 - prob)
    else:
        pred, conf = prob.argmax(axis=1), prob.max(axis=1)
    correct = (pred == target.astype(np.int64)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)
