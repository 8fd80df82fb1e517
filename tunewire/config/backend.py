"""Ludwig's `backend`: where a job trains. One definition for both model types.

Ludwig's `ray` backend is not built: jobs run on the trainer, so `backend.type` is `local`. A
generative (`llm`) job runs as `torchrun` workers that `backend.trainer` counts and shapes (see
`tunewire.config.llm`); a predictive head trains in the trainer's own process and refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tunewire.config.schema import check


@dataclass
class DistributedTrainer:
    strategy: Literal["ddp", "fsdp"] = field(
        default="ddp", metadata={"help": "ddp replicates; fsdp is FSDP2 (fully_shard)."}
    )
    num_workers: int = field(default=1, metadata={"help": "Worker processes (GPUs) per node."})
    nnodes: int = field(default=1, metadata={"help": "Nodes; > 1 needs a multi-node launcher."})
    use_gpu: bool = field(default=True, metadata={"help": "false: train on CPU (gloo)."})
    reshard_after_forward: bool = field(
        default=True,
        metadata={
            "help": "fsdp: free gathered layer weights after forward (false: "
            "keep them for backward, one all-gather less, more memory)."
        },
    )

    @staticmethod
    def precheck(data: dict) -> None:
        check(
            data.get("strategy") not in ("deepspeed", "horovod"),
            f"strategy {data.get('strategy')!r} is not built; use ddp or fsdp (FSDP2)",
            "strategy",
        )

    def __post_init__(self) -> None:
        check(self.num_workers >= 1, "must be >= 1", "num_workers")
        check(self.nnodes >= 1, "must be >= 1", "nnodes")

    @property
    def world_size(self) -> int:
        return self.num_workers * self.nnodes


@dataclass
class BackendConfig:
    type: Literal["local"] = field(default="local", metadata={"help": "torchrun workers."})
    trainer: DistributedTrainer = field(default_factory=DistributedTrainer)

    @staticmethod
    def precheck(data: dict) -> None:
        check(
            data.get("type", "local") == "local",
            f"backend {data.get('type')!r} is not built; jobs run on the trainer "
            "(backend.type: local; an llm job's torchrun workers are set in backend.trainer)",
            "type",
        )
