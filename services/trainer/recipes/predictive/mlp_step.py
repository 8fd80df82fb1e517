"""A plain MLP head's forward and backward on the CPU, spelled out with the kernels autograd runs.

Why: the README's head (384 → 128 → 1, batch 64) spent ~0.5 ms a step in autograd's forward and
backward on one CPU core, of which its GEMMs and dropout's mask are ~0.2 ms; the rest was the
engine, the modules' Python and some forty small kernels. A warm job takes ~1,100 such steps.
Called here directly, with the formulas autograd's derivatives use (`derivatives.yaml`,
`FunctionsManual.cpp`: addmm's and mm's backward in their layouts, `threshold_backward` for
ReLU, dropout's mask as `_dropout_impl` draws it, the binary cross-entropy's gradient), in the
same order from the same RNG, the loss and every gradient are the same bits
(tests/predictive/test_mlp_step.py holds them to autograd's for each layer and loss kind taken):
~0.3 ms a step.

What it takes (`MlpStep.plan` says why not otherwise, and the step goes through autograd as
before): one input that is a float matrix (a text feature's vectors), the combiner's and one
output's layers each Linear → ReLU/tanh/GELU/SiLU → optional dropout, no norm layers, the
output's loss weight 1, no regularization, one micro-batch a step, parameters on the CPU. The
binary cross-entropy's backward is spelled out; other losses' go through autograd on their own
few nodes (the loss's graph alone), so any loss kind is taken.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from tunewire.heads import PredictiveModel, output_size

_ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.GELU, nn.SiLU)


@dataclass(frozen=True)
class Layer:
    """Linear → activation (or none) → dropout with probability `p` (0: none)."""

    linear: nn.Linear
    activation: nn.Module | None
    p: float


def _layers(modules: list[nn.Module]) -> list[Layer] | None:
    """An fc stack's modules as Layers, or None when it holds anything else (a norm)."""
    layers: list[Layer] = []
    i = 0
    while i < len(modules):
        linear = modules[i]
        if type(linear) is not nn.Linear:
            return None
        i += 1
        activation = None
        if i < len(modules) and type(modules[i]) in _ACTIVATIONS:
            activation = modules[i]
            i += 1
        p = 0.0
        if i < len(modules) and type(modules[i]) is nn.Dropout:
            p = float(modules[i].p)
            i += 1
        layers.append(Layer(linear, activation, p))
    return layers


class MlpStep:
    """Sets the gradient of every parameter of `model` for one batch and returns its loss
    (detached), as `model.loss(model(x), y)` followed by `.backward()` would."""

    def __init__(self, model: PredictiveModel, layers: list[Layer]) -> None:
        self.model = model
        self.input = model.inputs[0].name
        self.output, self.head = next(iter(model.outputs.items()))
        self.layers = layers
        self.squeeze = output_size(self.head.meta) == 1 and self.head.meta.type != "vector"
        self.bce = self.head.feature.loss.type == "binary_weighted_cross_entropy"

    @classmethod
    def plan(cls, model: PredictiveModel) -> tuple[MlpStep | None, str]:
        """The step for `model`, or None and why it trains through autograd instead."""
        if len(model.inputs) != 1 or model.inputs[0].type != "text" or len(model.categories):
            return None, "the head has inputs other than one text feature"
        if len(model.outputs) != 1:
            return None, "the head has several outputs"
        head = next(iter(model.outputs.values()))
        if head.feature.loss.weight != 1:
            return None, "the output's loss is weighted"
        combiner, body = _layers(list(model.combiner.body)), _layers(list(head.head.body))
        if combiner is None or body is None:
            return None, "a layer other than linear, activation and dropout (a norm)"
        layers = combiner + body + [Layer(head.head.out, None, 0.0)]
        for layer in layers:
            weight = layer.linear.weight
            if weight.device.type != "cpu" or weight.dtype != torch.float32:
                return None, "the head is not float32 on the CPU"
            if not weight.is_contiguous():
                return None, "a weight is not contiguous"
        return cls(model, layers), ""

    def __call__(self, x: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> torch.Tensor:
        assert self.model.training, "the step trains: dropout on"
        with torch.no_grad():
            saved, a = [], x[self.input]
            for layer in self.layers:
                out, keep = self._forward(layer, a)
                saved.append((a, *keep))
                a = out
            z = a.squeeze(-1) if self.squeeze else a
            loss, grad = self._loss(z, y[self.output])
            if self.squeeze:
                grad = grad.unsqueeze(-1)  # squeeze's backward
            for i in range(len(self.layers) - 1, -1, -1):
                grad = self._backward(self.layers[i], saved[i], grad, need_input=i > 0)
        return loss

    @staticmethod
    def _forward(layer: Layer, a: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """F.linear, the activation and F.dropout as they run in training; returns the output
        and what the backward needs (pre-activation, activation's result, dropout's noise)."""
        linear = layer.linear
        if linear.bias is not None:
            h = torch.addmm(linear.bias, a, linear.weight.t())
        else:
            h = a.mm(linear.weight.t())  # F.linear without bias: matmul, an mm for 2-D
        act = layer.activation
        r = h if act is None else act(h)
        noise = None
        if layer.p > 0:  # _dropout_impl on a CPU: the mask drawn, scaled, multiplied
            noise = torch.empty_like(r).bernoulli_(1 - layer.p)
            noise.div_(1 - layer.p)
            return r * noise, (h, r, noise)
        return r, (h, r, noise)

    @staticmethod
    def _backward(
        layer: Layer, saved: tuple, grad: torch.Tensor, need_input: bool
    ) -> torch.Tensor | None:
        """Sets the layer's weight and bias gradients; returns its input's gradient."""
        a, h, r, noise = saved
        if noise is not None:
            grad = grad * noise  # MulBackward0: grad * other
        act = layer.activation
        if type(act) is nn.ReLU:
            grad = torch.ops.aten.threshold_backward(grad, r, 0)
        elif type(act) is nn.Tanh:
            grad = torch.ops.aten.tanh_backward(grad, r)
        elif type(act) is nn.GELU:
            grad = torch.ops.aten.gelu_backward(grad, h, approximate=act.approximate)
        elif type(act) is nn.SiLU:
            grad = torch.ops.aten.silu_backward(grad, h)
        linear = layer.linear
        weight = linear.weight
        # addmm's (or mm's) mat2 is weight.t(), column-major: mm_mat2_backward gives
        # grad.t().mm(mat1).t(), and t()'s backward turns it back.
        weight.grad = grad.t().mm(a)
        if linear.bias is not None:
            linear.bias.grad = grad.sum(0)  # sum_to the bias's shape
        if not need_input:
            return None
        # mm_mat1_backward: a column-major input gets its gradient column-major.
        if a.stride(0) == 1 and a.stride(1) == a.size(0):
            return weight.t().mm(grad.t()).t()
        return grad.mm(weight)

    def _loss(self, z: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss and its gradient with respect to `z` (backward's seed: 1)."""
        head = self.head
        if self.bce:
            pos_weight = head.pos_weight
            loss = F.binary_cross_entropy_with_logits(z, target, pos_weight=pos_weight)
            # binary_cross_entropy_with_logits_backward with pos_weight, outside grad mode
            t = pos_weight.mul(target)
            grad = t.add(1).sub_(target).mul_(z.sigmoid()).sub_(t)
            return loss, grad.div_(z.numel())
        with torch.enable_grad():
            leaf = z.detach().requires_grad_()
            loss = head.loss(leaf, target)
            (grad,) = torch.autograd.grad(loss, leaf)
        return loss.detach(), grad
