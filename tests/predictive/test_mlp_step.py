"""The autograd-free step of a plain MLP head (`mlp_step.py`) gives autograd's loss and
gradients bit for bit, for every layer and loss kind it takes (dropout's mask drawn from the same
RNG), and a head it does not take says why and trains through autograd."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from services.trainer.model_types import resolve
from services.trainer.recipes.predictive.data import prepare
from services.trainer.recipes.predictive.mlp_step import MlpStep
from services.trainer.recipes.predictive.recipe import build_model
from tunewire import heads as pm

ROWS, DIM = 37, 24  # an odd batch, as an epoch's last one


def text_head(outputs, combiner: dict | None = None, labels=("no", "yes"), seed: int = 0):
    """A head on one text feature's vectors (random, DIM wide) for `outputs` (one output's
    dict, or a list); returns the model (in training mode) and one batch (x, y) as the loop
    hands it over."""
    outputs = outputs if isinstance(outputs, list) else [outputs]
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(ROWS)]})
    for output in outputs:
        if output["type"] == "number":
            frame[output["name"]] = rng.normal(size=ROWS).round(3).astype(str)
        else:
            frame[output["name"]] = rng.choice(list(labels), size=ROWS)
    cfg = resolve(
        {
            "input_features": [
                {
                    "name": "text",
                    "type": "text",
                    "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": "m"},
                }
            ],
            "output_features": outputs,
            **({"combiner": combiner} if combiner else {}),
        }
    )
    data = prepare(cfg, {"train": frame})
    refs = pm.encoder_refs(cfg)
    refs["text"].dimension = DIM
    torch.manual_seed(seed)
    model = build_model(cfg, data, refs).train()
    x = {"text": torch.from_numpy(rng.normal(size=(ROWS, DIM)).astype(np.float32))}
    y = {k: torch.from_numpy(v) for k, v in data.y["train"].items()}
    return model, x, y


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    grads = {name: p.grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = None
    return grads


HEADS = {
    "README's: relu, dropout, binary": (
        {"name": "label", "type": "binary", "decoder": {"num_fc_layers": 1, "fc_dropout": 0.1}},
        None,
    ),
    "combiner tanh + dropout, decoder gelu x2, weighted binary": (
        {
            "name": "label",
            "type": "binary",
            "loss": {"positive_class_weight": 3.0},
            "decoder": {"num_fc_layers": 2, "fc_output_size": 16, "fc_activation": "gelu"},
        },
        {"num_fc_layers": 1, "output_size": 32, "activation": "tanh", "dropout": 0.2},
    ),
    "silu without biases, weighted category": (
        {
            "name": "kind",
            "type": "category",
            "loss": {"class_weights": {"b": 2.0}},
            "decoder": {
                "num_fc_layers": 1,
                "fc_activation": "silu",
                "fc_use_bias": False,
                "use_bias": False,
                "fc_dropout": 0.3,
            },
        },
        None,
    ),
    "category, focal loss, no hidden layer": (
        {"name": "kind", "type": "category", "loss": {"type": "focal", "gamma": 2.0}},
        None,
    ),
    "binary focal": (
        {"name": "label", "type": "binary", "loss": {"type": "focal"}},
        {"num_fc_layers": 2, "output_size": 8, "dropout": 0.5},
    ),
    "number, mse": (
        {"name": "score", "type": "number", "decoder": {"num_fc_layers": 1, "fc_dropout": 0.1}},
        None,
    ),
    "number, huber": ({"name": "score", "type": "number", "loss": {"type": "huber"}}, None),
}


@pytest.mark.parametrize("name", list(HEADS))
def test_loss_and_gradients_are_autograds_bit_for_bit(name):
    output, combiner = HEADS[name]
    labels = ("no", "yes") if output["type"] == "binary" else ("a", "b", "c")
    model, x, y = text_head(output, combiner, labels=labels)
    step, why = MlpStep.plan(model)
    assert step is not None, why
    for _ in range(3):  # successive draws of dropout's mask, from one RNG state
        rng = torch.get_rng_state()
        expected, _ = model.loss(model(x), y)
        expected.backward()
        expected_grads = grads(model)
        torch.set_rng_state(rng)
        loss = step(x, y)
        assert not loss.requires_grad
        assert torch.equal(loss, expected.detach())
        for key, value in grads(model).items():
            assert value.shape == expected_grads[key].shape, key
            assert torch.equal(value, expected_grads[key]), key
        with torch.no_grad():  # move the weights, so the next draw sees new activations
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)


@pytest.mark.parametrize(
    ("outputs", "why"),
    [
        (
            {
                "name": "label",
                "type": "binary",
                "decoder": {"num_fc_layers": 1, "fc_norm": "batch"},
            },
            "norm",
        ),
        (
            {
                "name": "label",
                "type": "binary",
                "decoder": {"num_fc_layers": 1, "fc_norm": "layer"},
            },
            "norm",
        ),
        ({"name": "label", "type": "binary", "loss": {"weight": 2.0}}, "weighted"),
        (
            [{"name": "label", "type": "binary"}, {"name": "other", "type": "binary"}],
            "several outputs",
        ),
    ],
)
def test_a_head_it_does_not_take_says_why(outputs, why):
    model, _, _ = text_head(outputs)
    step, reason = MlpStep.plan(model)
    assert step is None
    assert why in reason
