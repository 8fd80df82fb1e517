"""Predictive fine-tuning (`model_type: ecd`): a task head on frozen, cached encoder embeddings."""
