"""The predictive recipe's second kind of encoder: a PEFT-adapted text encoder (`trainable: true`
+ `adapter: lora`), its LoRA weights trained with the head, end to end, in this process.

This is the one path where the trainer loads an encoder itself: an encoder that changes as it
trains has no fixed vectors to cache, so the embedder cannot help (and asking for its cache is a
config error). Other text features of the same model stay frozen and come from the embedder as
usual. Tokenising (right padding, truncation, special tokens) and pooling (the embedder's own
functions, imported) match the embedder, so before the first step the adapted encoder gives the
embedder's vectors.

The recipe (`recipe.py`) runs it per batch; the artifact keeps the adapter in `encoder_adapter/`
(PEFT's `save_pretrained`), and `load_adapted` brings it back for prediction.
"""

from __future__ import annotations

import structlog
import torch
from torch import nn

from services.trainer.context import JobContext, Log
from tunewire import heads as pm
from tunewire.config.ecd import EncoderConfig
from tunewire.devices import default_device
from tunewire.errors import InvalidArgument
from tunewire.model_init import building_modules
from tunewire.pooling import pool
from tunewire.truncation import truncated_ids

log = structlog.get_logger(__name__)

# Texts per encoder forward at evaluation (training uses trainer.batch_size).
EVAL_BATCH = 64


class AdaptedEncoder(nn.Module):
    """Texts → pooled vectors through a (LoRA-wrapped) transformers encoder."""

    def __init__(
        self, encoder: nn.Module, tokenizer, ref: pm.EncoderRef, device: torch.device
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.ref = ref
        self.device = device

    @classmethod
    @building_modules()
    def load_base(
        cls, ref: pm.EncoderRef, device: torch.device | None = None, field: str = "model"
    ) -> tuple[nn.Module, object]:
        """The base encoder (float32, frozen) and its tokenizer, set up as the embedder's;
        `field` is the config path that errors name."""
        from transformers import AutoModel, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(ref.spec.model)
            base = AutoModel.from_pretrained(ref.spec.model, dtype=torch.float32)
        except OSError as exc:
            raise InvalidArgument(
                f"cannot load encoder {ref.spec.model!r}: {exc}", field=field
            ) from None
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise InvalidArgument(
                    "the tokenizer has neither a pad nor an eos token", field=field
                )
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"
        base.requires_grad_(False)
        return base.to(device or default_device()), tokenizer

    def _max_length(self) -> int:
        limits = [
            int(self.tokenizer.model_max_length),
            int(getattr(self.encoder.config, "max_position_embeddings", 0) or 0),
        ]
        limits = [n for n in limits if 0 < n < 1_000_000]
        model_limit = min(limits) if limits else 512
        return (
            min(self.ref.spec.max_length, model_limit) if self.ref.spec.max_length else model_limit
        )

    def forward(self, texts: list[str]) -> torch.Tensor:
        # Long texts are cut before tokenising, as the embedder cuts them (tunewire/truncation):
        # a tokenizer holds its whole input, ~50 bytes a character.
        rows = truncated_ids(self.tokenizer, texts, self._max_length())
        # As the embedder: a text with no tokens becomes one eos (or pad) token.
        filler = (
            self.tokenizer.eos_token_id
            if self.tokenizer.eos_token_id is not None
            else self.tokenizer.pad_token_id
        )
        rows = [row or [int(filler)] for row in rows]
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), int(self.tokenizer.pad_token_id), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):  # right padding
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        layer = self.ref.spec.layer
        out = self.encoder(
            input_ids=ids, attention_mask=mask, output_hidden_states=layer not in (0, -1)
        )
        hidden = out.last_hidden_state if layer in (0, -1) else out.hidden_states[layer]
        return pool(hidden, mask, self.ref.spec.pooling, normalize=self.ref.spec.normalize)


@building_modules()
def wrap_lora(base: nn.Module, enc: EncoderConfig, field: str = "encoder") -> nn.Module:
    """The base with LoRA on `target_modules` (PEFT's default per architecture when null);
    only the LoRA weights train."""
    from peft import LoraConfig, get_peft_model

    adapter = enc.adapter
    assert adapter is not None  # the config refuses trainable without an adapter
    lora = LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=adapter.target_modules,
        bias=adapter.bias,
    )
    try:
        return get_peft_model(base, lora)
    except ValueError as exc:  # e.g. target modules that the model does not have
        raise InvalidArgument(str(exc), field=f"{field}.adapter.target_modules") from None


@building_modules()
def load_adapted(ref: pm.EncoderRef, adapter_dir) -> AdaptedEncoder:
    """For predict: the base encoder with the artifact's adapter, in eval mode."""
    from peft import PeftModel

    base, tokenizer = AdaptedEncoder.load_base(ref)
    peft_model = PeftModel.from_pretrained(base, str(adapter_dir))
    encoder = AdaptedEncoder(peft_model, tokenizer, ref, next(base.parameters()).device)
    return encoder.eval()


def adapt(ctx: JobContext, encoders: dict[str, pm.EncoderRef]) -> AdaptedEncoder:
    """The job's trainable text feature's encoder, loaded here with LoRA around it; its ref gets
    the encoder's width."""
    i, feature = next(
        (i, f)
        for i, f in enumerate(ctx.config.input_features)
        if f.type == "text" and f.encoder.trainable
    )
    path = f"input_features[{i}].encoder"
    ref = encoders[feature.name]
    base, tokenizer = AdaptedEncoder.load_base(ref, field=f"{path}.{feature.encoder.model_key}")
    ref.dimension = int(base.config.hidden_size)
    encoder = AdaptedEncoder(
        wrap_lora(base, feature.encoder, path), tokenizer, ref, next(base.parameters()).device
    )
    trainable = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    total = sum(p.numel() for p in encoder.parameters())
    ctx.emit(
        Log(f"adapting {ref.spec.model} with LoRA: {trainable} of {total} encoder parameters train")
    )
    return encoder
