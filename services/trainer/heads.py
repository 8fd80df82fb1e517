"""The task head: an MLP on the pooled encoder output (Ludwig's fc stack + output projection)."""

from __future__ import annotations

import torch
from torch import nn

from tunewire.config.ecd import DecoderConfig

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def layer_specs(cfg: DecoderConfig) -> list[dict]:
    """The hidden layers as [{output_size, dropout, activation}], from fc_layers or num_fc_layers."""
    if cfg.fc_layers is not None:
        return [{"output_size": int(l.get("output_size", cfg.fc_output_size)),
                 "dropout": float(l.get("dropout", cfg.fc_dropout)),
                 "activation": l.get("activation", cfg.fc_activation)} for l in cfg.fc_layers]
    return [{"output_size": cfg.fc_output_size, "dropout": cfg.fc_dropout,
             "activation": cfg.fc_activation}] * cfg.num_fc_layers


class MLPHead(nn.Module):
    """input_dim → [Linear → (norm) → activation → dropout] × n → Linear(out_dim)."""

    def __init__(self, input_dim: int, out_dim: int, layers: list[dict], norm: str | None = None,
                 bias: bool = True) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        dim = input_dim
        for spec in layers:
            blocks.append(nn.Linear(dim, spec["output_size"], bias=bias))
            if norm == "layer":
                blocks.append(nn.LayerNorm(spec["output_size"]))
            elif norm == "batch":
                blocks.append(nn.BatchNorm1d(spec["output_size"]))
            if spec["activation"] not in _ACTIVATIONS:
                raise ValueError(f"unknown activation {spec['activation']!r}")
            blocks.append(_ACTIVATIONS[spec["activation"]]())
            if spec["dropout"] > 0:
                blocks.append(nn.Dropout(spec["dropout"]))
            dim = spec["output_size"]
        self.body = nn.Sequential(*blocks)
        self.out = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))
