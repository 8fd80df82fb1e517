"""Ludwig's `trainer.type: none` for an llm: nothing is trained. The base model is evaluated on
each split (the same loss, perplexity and token accuracy a fine-tuning job reports) and generates
an answer for every row of the data set; sampling is seeded by the job's `seed`, so a rerun gives
the same text. The artifact references the base model instead of copying its weights."""

from __future__ import annotations

import pandas as pd
import torch
import torch.distributed as dist

from services.trainer.recipes.generative import artifacts
from services.trainer.recipes.generative.model import load_tokenizer
from services.trainer.recipes.generative.predict import generate_texts, generation_from_config
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
        out = []
        if not t.skip_all_evaluation:
            for split in SPLITS:
                if split in self.samples and (split != "train" or t.evaluate_training_set):
                    out += [
                        {"split": split, "feature": self.cfg.output.name, "name": k, "value": v}
                        for k, v in self.evaluate(split).items()
                    ]
        if out:
            self.events.metrics(out)
        self.final_metrics = out
        self.predictions = self._predict_all()
        return out

    @torch.no_grad()
    def _predict_all(self) -> pd.DataFrame:
        """An answer for every row of every split; each rank takes every world-th row."""
        gen = generation_from_config(self.cfg, self.tokenizer, self.lm.config)
        frames = []
        for split in SPLITS:
            df = self.job.split(split)
            if df is None or not len(df):
                continue
            mine = df.iloc[self.rank :: self.world]
            torch.manual_seed(self.seed + self.rank)
            texts = generate_texts(self.cfg, self.lm, self.tokenizer, mine, gen, self.device)
            frame = mine.copy()
            frame.insert(0, "split", split)
            frame[f"{self.cfg.output.name}_predictions"] = texts
            frames.append(frame)
        mine_all = pd.concat(frames) if frames else pd.DataFrame()
        if self.world > 1:
            gathered: list = [None] * self.world
            dist.all_gather_object(gathered, mine_all)
            mine_all = pd.concat(gathered)
        return mine_all.reset_index(drop=True)

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
