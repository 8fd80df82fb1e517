"""Ludwig's `trainer.type: none` for an llm: nothing is trained. The base model is evaluated on
each split (the same loss, perplexity and token accuracy a fine-tuning job reports) and generates
an answer for every row of the data set; sampling is seeded by the job's `seed`, so a rerun gives
the same text. The artifact references the base model instead of copying its weights."""

from __future__ import annotations

import pandas as pd
import torch

from services.trainer.recipes.generative import artifacts
from services.trainer.recipes.generative.model import load_tokenizer
from services.trainer.recipes.generative.recipe import GenerativeRecipe

SPLITS = ("train", "validation", "test")


class ZeroShotRecipe(GenerativeRecipe):
    """The generative recipe's data, model and evaluation, with no optimizer and no loop."""

    def setup(self) -> None:
        seed = self.cfg.trainer.seed if self.cfg.trainer.seed is not None else self.cfg.seed
        self.seed = seed
        self.tokenizer = load_tokenizer(self.cfg.base_model)
        self._setup_data(seed)
        self._setup_model()
        self.model.eval()
        self.predictions: pd.DataFrame | None = None

    def train(self) -> None:
        self.events.log("trainer.type is none: nothing is trained; the base model is evaluated")

    def final_evaluation(self) -> list[dict]:
        t = self.cfg.trainer
        self.predictions = self._predict_all()
        out = []
        if not t.skip_all_evaluation:
            for split in SPLITS:
                if split in self.samples and (split != "train" or t.evaluate_training_set):
                    values = self.evaluate(split)
                    if self.cfg.output.type == "category":
                        values["accuracy"] = self._accuracy(split)
                    out += [
                        {"split": split, "feature": self.cfg.output.name, "name": k, "value": v}
                        for k, v in values.items()
                    ]
        if out:
            self.events.metrics(out)
        self.final_metrics = out
        return out

    def _accuracy(self, split: str) -> float:
        rows = self.predictions[self.predictions["split"] == split]
        name, column = self.cfg.output.name, self.cfg.output.column
        hits = rows[f"{name}_predictions"] == rows[column].astype(str)
        return float(hits.mean()) if len(rows) else 0.0

    def _predict_all(self) -> pd.DataFrame:
        """An answer for every row of every split (a category output: its extracted label too),
        sampling seeded per split, so predict on the artifact repeats a split's answers."""
        frames = []
        for split in SPLITS:
            df = self.job.split(split)
            if df is None or not len(df):
                continue
            torch.manual_seed(self.seed + self.rank)
            texts = self.generate_rows(df)
            frame = df.copy()
            frame.insert(0, "split", split)
            name = self.cfg.output.name
            if self.cfg.output.type == "category":
                frame[f"{name}_response"] = texts
                texts = [self.cfg.output.extract_label(t) for t in texts]
            frame[f"{name}_predictions"] = texts
            frames.append(frame)
        return pd.concat(frames).reset_index(drop=True) if frames else pd.DataFrame()

    def save_checkpoint(self) -> None:  # nothing trains, nothing to resume
        pass

    def save_artifact(self) -> None:
        if self.rank == 0:
            artifacts.write_zero_shot(
                self.job.artifact_dir,
                cfg=self.cfg,
                config_dict=self.job.config_dict,
                predictions=self.predictions,
                metrics=self.final_metrics,
                job_id=self.job.job_id,
            )
            self.events.log("artifact written: zero_shot (references the base model)")
