"""Fully connected stacks: the combiner's fc layers and each output's decoder (Ludwig's fc stack +
output projection). One builder for both, so the two read their config the same way."""

from __future__ import annotations

import torch
from torch import nn

from tunewire.config.ecd import CombinerConfig, DecoderConfig

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def _specs(
    fc_layers: list[dict] | None, count: int, size: int, dropout: float, activation: str
) -> list[dict]:
    if fc_layers is not None:
        return [
            {
                "output_size": int(l.get("output_size", size)),
                "dropout": float(l.get("dropout", dropout)),
                "activation": l.get("activation", activation),
            }
            for l in fc_layers  # noqa: E741
        ]
    return [{"output_size": size, "dropout": dropout, "activation": activation}] * count


def layer_specs(cfg: DecoderConfig) -> list[dict]:
    """A decoder's hidden layers as [{output_size, dropout, activation}]."""
    return _specs(
        cfg.fc_layers, cfg.num_fc_layers, cfg.fc_output_size, cfg.fc_dropout, cfg.fc_activation
    )


def combiner_specs(cfg: CombinerConfig) -> list[dict]:
    """The concat combiner's hidden layers, from fc_layers or num_fc_layers/output_size."""
    return _specs(cfg.fc_layers, cfg.num_fc_layers, cfg.output_size, cfg.dropout, cfg.activation)


class FCStack(nn.Module):
    """[Linear → (norm) → activation → dropout] × n; `output_dim` is the last width."""

    def __init__(
        self, input_dim: int, layers: list[dict], norm: str | None = None, bias: bool = True
    ) -> None:
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
        self.output_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MLPHead(nn.Module):
    """input_dim → FCStack → Linear(out_dim). `out_bias=False` makes a head that a stock
    `*ForSequenceClassification` checkpoint (whose `score` has no bias) can hold exactly."""

    def __init__(
        self,
        input_dim: int,
        out_dim: int,
        layers: list[dict],
        norm: str | None = None,
        bias: bool = True,
        out_bias: bool = True,
    ) -> None:
        super().__init__()
        stack = FCStack(input_dim, layers, norm=norm, bias=bias)
        self.body = stack.body
        self.out = nn.Linear(stack.output_dim, out_dim, bias=out_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))
