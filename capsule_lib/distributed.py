"""Training on several processes with PyTorch's DistributedDataParallel (DDP).

    torchrun --standalone --nproc_per_node 4 -m capsule_lib.train --recipe capsnet-paper

torchrun starts one process per GPU (or per CPU share with the gloo backend) and tells each its
rank and the world size through environment variables; `start_from_environment` joins them into
one process group. `fit` then trains the same model on every process:

- every process draws the same global batch from the run's seeded generator and applies the
  same augmentation to it, then keeps its own contiguous shard (`shard`): the union of the
  shards is exactly the batch a single process would train on, augmented alike;
- each process scales its shard's mean loss by (shard size x world size / global batch size),
  so that DDP's average of the gradients is the gradient of the global batch's mean loss, also
  for a last batch that does not split evenly;
- the learning-rate schedule counts global steps, as a single process does; the epoch's loss
  and accuracy are summed over the processes before they are recorded.

A model without BatchNorm (CapsNet, DeepCapsNet) therefore ends with the weights of a
single-process run of the same recipe, up to float rounding (tests/test_distributed.py checks
it). BatchNorm (Efficient-CapsNet) becomes SyncBatchNorm on GPUs, whose statistics span the
global batch; on CPUs PyTorch has no SyncBatchNorm, so each process normalises with its own
shard's statistics and DDP copies rank 0's running averages to the others: close to, but not
the same as, one process. Dropout (the CNN baselines) draws the same masks on every process.
"""
import os

import torch
import torch.distributed as dist
from torch import Tensor, nn

BACKENDS = ("nccl", "gloo")


def process_group() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) when torch.distributed is not running."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0 (and without torch.distributed): the process that prints and saves."""
    return process_group()[0] == 0


def launched_by_torchrun() -> bool:
    """True when the environment describes more than one process (torchrun's WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start_from_environment(backend: str) -> torch.device:
    """Join torchrun's process group and return this process's device: cuda:LOCAL_RANK with
    nccl, the CPU with gloo (the command line picks the backend, see train.py --backend)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ValueError("the nccl backend needs GPUs and none is visible; use "
                             "--backend gloo to train on CPU processes")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"process {local_rank} on this machine has no GPU of its own "
                             f"({torch.cuda.device_count()} visible): start at most that many "
                             f"processes per machine (torchrun --nproc_per_node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend)
    return device


def stop() -> None:
    """Leave the process group (a no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_global_batches(n_images: int, batch_size: int, world_size: int) -> None:
    """Every process needs a share of every global batch: the batch size must split evenly,
    and the epoch's last, shorter batch must hold at least one image per process."""
    if batch_size % world_size:
        raise ValueError(f"the global batch size {batch_size} does not split evenly over "
                         f"{world_size} processes; use a multiple of {world_size}")
    last = n_images % batch_size
    if 0 < last < world_size:
        raise ValueError(f"the epoch's last batch holds {last} image(s) ({n_images} images in "
                         f"batches of {batch_size}), fewer than the {world_size} processes; "
                         f"change the batch size or --train-size")


def shard(batch: Tensor, rank: int, world_size: int) -> Tensor:
    """This process's contiguous share of a global batch [B, ...] (sizes differ by at most 1)."""
    return batch.tensor_split(world_size)[rank]


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The model as DDP trains it: BatchNorm made SyncBatchNorm on GPUs, then wrapped."""
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    return nn.parallel.DistributedDataParallel(model)


def sum_over_processes(*values: float) -> list[float]:
    """Each value summed over all processes (the values themselves without a process group)."""
    if process_group()[1] == 1:
        return list(values)
    total = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(total)
    return total.tolist()
