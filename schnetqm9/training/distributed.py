"""Data parallelism over processes with torch.distributed, as torchrun launches it; a plain `python` run is one
process and none of this does anything.

    torchrun --nproc_per_node 2 train_lite.py                      # two CPU processes on one machine (gloo)
    torchrun --nproc_per_node 8 train.py --target gap              # eight GPUs of one node (NCCL)
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 train.py ...

Every process holds the whole model and the whole data set. The B molecules of a step (the global batch) are cut
into `world` contiguous shares, one per rank; each rank back-propagates (sum of its share's losses) / B, and the
gradients are summed over the ranks, so every rank holds the one-process gradient of the whole batch and takes the
same optimiser step. Decisions that depend on a clock (end of the time budget, when to save) are agreed by all ranks,
so that they leave the loop at the same step.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run; World() is the single process."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # where collectives run (NCCL: this rank's GPU)

    @property
    def main(self) -> bool:
        """Rank 0: the one process that prints and writes files."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def shard(self, mols: Tensor) -> Tensor:
        """This rank's contiguous share of `mols` [M] (sizes differ by at most one)."""
        return mols.tensor_split(self.size)[self.rank] if self.active else mols

    def sum_(self, tensor: Tensor) -> Tensor:
        """Sums `tensor` over the ranks, in place (on this rank's device)."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def agree(self, *values: float) -> list[float]:
        """The largest of each value over the ranks: any rank's True (1.0) wins, clocks take the slowest."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def gather(self, part: Tensor, total: int) -> Tensor:
        """Concatenates every rank's `part` (its shard's rows, [m_r, ...]) in rank order: the rows for all `total`
        molecules, on the CPU."""
        if not self.active:
            return part
        sizes = [len(s) for s in torch.arange(total).tensor_split(self.size)]
        padded = part.new_zeros((max(sizes), *part.shape[1:]), device=self.device)
        padded[: len(part)] = part.to(self.device)
        pieces = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(pieces, padded)  # all_gather needs equal shapes: pad, then cut
        return torch.cat([p[:n] for p, n in zip(pieces, sizes)]).cpu()

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def cpu_threads(local_size: int) -> int:
    """Threads per CPU process: the user's OMP_NUM_THREADS when it says more than torchrun's default of 1, else
    this machine's cores shared out between the processes on it."""
    user = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if user > 1:
        return user
    return max(1, len(os.sched_getaffinity(0)) // local_size)


def init(use_cuda: bool) -> World:
    """Joins the process group when torchrun started this process (WORLD_SIZE > 1): NCCL with one GPU per process
    (LOCAL_RANK) on CUDA, gloo on the CPU. Without torchrun, World() and no process group."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(cpu_threads(int(os.environ.get("LOCAL_WORLD_SIZE", size))))
    dist.init_process_group("nccl" if use_cuda else "gloo", store=_store(rank, size), rank=rank, world_size=size,
                            device_id=device if use_cuda else None)
    return World(rank, size, local_rank, device)


def _store(rank: int, size: int) -> dist.Store:
    """The key-value store the ranks meet in (torchrun's MASTER_ADDR:MASTER_PORT, as env:// would open it), with
    the keys of each restarted worker group under a prefix of their own: torchrun keeps its store across restarts,
    and without the prefix a new group can read the dead group's addresses (gloo: 'connectFullMesh failed')."""
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun hosts it; else rank 0 does
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size,
                          is_master=not agent_store and rank == 0, multi_tenant=not agent_store)
    return dist.PrefixStore(f"schnet-attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)


def restarted() -> bool:
    """True in a worker group that torchrun restarted after a failure (--max-restarts)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def close(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()
