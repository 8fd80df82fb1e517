"""The baseline of bench/online_serving.py: what a user writes in an afternoon to serve a model
over HTTP - a plain FastAPI app that runs transformers (and the predictive head) per request.

    python bench/online_baseline.py --model DIR [--artifact DIR] --port 8100 [--device cuda]
        [--dtype bfloat16]

`POST /predict` ({"text": ...}): tokenise, encode, mean-pool (normalise if the artifact's encoder
did), run the head, answer Ludwig's columns. `POST /v1/embeddings` (OpenAI's request; vectors
L2-normalised, float or base64). No cache, no batching across requests.
"""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class PredictRequest(BaseModel):
    text: str


class EmbeddingsRequest(BaseModel):
    input: str | list[str]
    model: str = ""
    encoding_format: str = "float"


def build_app(
    model_dir: str, artifact: str | None, device: str, max_length: int, dtype: str = "auto"
) -> FastAPI:
    """`dtype` "auto": bf16 on a GPU, float32 on a CPU, as a user's first version would."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else "float32"
    dtype = getattr(torch, dtype)
    model = AutoModel.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    head = normalize = None
    if artifact:
        from tunewire import heads

        loaded = heads.load(Path(artifact))
        head = loaded.model.eval()
        ref = next(iter(loaded.encoders.values()))
        normalize, max_length = ref.spec.normalize, ref.spec.max_length or max_length
    app = FastAPI()

    @torch.no_grad()
    def embed(texts: list[str]) -> torch.Tensor:
        batch = tokenizer(
            texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(device)
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float()

    @app.post("/predict")
    def predict(body: PredictRequest):
        vectors = embed([body.text]).cpu()
        if normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        with torch.no_grad():
            logits = head({"text": vectors})
        out = {}
        for name, h in head.outputs.items():
            preds, probs, classes = h.decode(h.scores(logits[name]))
            out[f"{name}_predictions"] = preds[0]
            if probs is not None:
                out[f"{name}_probability"] = float(probs[0].max())
                out[f"{name}_probabilities"] = probs[0].tolist()
                for j, c in enumerate(classes):
                    out[f"{name}_probabilities_{c}"] = float(probs[0, j])
        return out

    @app.post("/v1/embeddings")
    def embeddings(body: EmbeddingsRequest):
        texts = [body.input] if isinstance(body.input, str) else body.input
        vectors = torch.nn.functional.normalize(embed(texts), dim=-1).cpu().numpy()
        if body.encoding_format == "base64":
            data = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
        else:
            data = vectors.tolist()
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)
            ],
            "model": body.model,
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        }

    @app.get("/health")
    def health():
        return {"status": "ok"}

    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--artifact")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    args = p.parse_args()
    app = build_app(args.model, args.artifact, args.device, args.max_length, args.dtype)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
