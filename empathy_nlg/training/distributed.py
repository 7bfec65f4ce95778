"""Training on more than one process: ``empathy-nlg train`` unchanged under ``torchrun``.

    torchrun --nproc_per_node 2 -m empathy_nlg.cli train --generator nec --config configs/train/nec_ed.yml

torchrun sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; without them a run is one process and
nothing here does anything. With them, every process builds the same model (same seed, same
checkpoint), the trainer draws the **global** batch of ``batch_size × world`` examples for each
step (the batch one process would draw with that batch size) and each process trains on its
share; PyTorch's DistributedDataParallel averages the gradients (gloo on CPU, NCCL on CUDA), so
every process takes the same optimiser step. The process of rank 0 alone builds the feature cache
first, writes the log, the checkpoints, the validation and the exported model, and decides when a
time budget (``--max-minutes``) ends the run; the others follow its decision.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


class LossStep(nn.Module):
    """``model.loss`` as a module, so that DistributedDataParallel sees the trained parts."""

    def __init__(self, model) -> None:
        super().__init__()
        self.peft = model.peft
        self.heads = model.heads
        self._model = [model]  # a list: the model object itself is not a submodule

    def forward(self, batch, step):
        return self._model[0].loss(batch, step)


class Distributed:
    """This process's place in the job (a plain run: world 1, rank 0, everything a no-op)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        self._started = False

    @property
    def main(self) -> bool:
        """Whether this process writes (rank 0)."""
        return self.rank == 0

    def start(self, device: str) -> str:
        """Join the job; returns the device this process trains on (its own GPU under NCCL)."""
        if not self.enabled:
            return device
        cuda = str(device).startswith("cuda")
        if cuda:
            torch.cuda.set_device(self.local_rank)
            device = f"cuda:{self.local_rank}"
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if cuda else "gloo")
            self._started = True
        return device

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def share(self, batch: Sequence[Any]) -> List[Any]:
        """This process's part of a global batch (every ``world``-th example from its rank)."""
        return list(batch)[self.rank :: self.world] if self.enabled else list(batch)

    def wrap(self, model):
        """The training step as a module: DistributedDataParallel over the adapters and heads
        when the job has several processes, the model's own ``loss`` otherwise."""
        if not self.enabled:
            return model.loss
        step = LossStep(model)
        ids = [torch.device(model.lm.device).index] if str(model.lm.device).startswith("cuda") else None
        # find_unused_parameters: a paper's heads need not all take part in every step (NEC's
        # contrastive projection waits for its stage); the frozen backbone is not trained
        return DistributedDataParallel(step, device_ids=ids, find_unused_parameters=True, broadcast_buffers=False)

    def mean_of(self, values: Dict[str, float]) -> Tuple[float, Dict[str, float]]:
        """``values["loss"]`` and the other values, each averaged over the processes that have it
        (what the step logs: a loss part may be missing on one process, e.g. NEC's contrastive
        term when its share of the batch has no negatives)."""
        if self.enabled:
            gathered: List[Dict[str, float]] = [{} for _ in range(self.world)]
            dist.all_gather_object(gathered, dict(values))
            keys = [k for k in values] + [k for g in gathered for k in g if k not in values]
            values = {k: sum(g[k] for g in gathered if k in g) / sum(1 for g in gathered if k in g) for k in dict.fromkeys(keys)}
        rest = {k: v for k, v in values.items() if k != "loss"}
        return float(values["loss"]), rest

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every process (e.g. "the time budget is spent": all stop together)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int64)
        dist.broadcast(t, src=0)
        return bool(t.item())

    def stop(self) -> None:
        if self._started:
            dist.destroy_process_group()
            self._started = False

