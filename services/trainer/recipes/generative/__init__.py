"""Generative fine-tuning (`model_type: llm`): full or PEFT, packed, resumable, DDP/FSDP2.

The job runner calls `launch.run_generative_job(ctx)`, which runs `worker.py` under torchrun;
the trainer's predict calls `predict.predict_generative(...)`. The rest are the recipe's parts:
`data` (templating, masking, packing), `loss` (fused linear cross-entropy), `attention` (varlen),
`model` (loading, adapters, DDP/FSDP2), `checkpoint`, `artifacts`, `events`, `recipe`.
"""
