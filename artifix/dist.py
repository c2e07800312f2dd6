"""Scale-out on torch.distributed: which rank am I, which samples are mine, and how shards merge.

`torchrun --nproc_per_node=P -m artifix <command> ...` starts P copies of the command with RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT in the environment. `init()` (called by the CLI before any command) joins the
process group when WORLD_SIZE > 1: gloo on CPU, NCCL when CUDA is available. Without torchrun (or with one
process) every helper here is the identity, so the library behaves exactly as a single process.

Sharding: `shard(items)` gives each rank one contiguous block of the run's sample ids (rank order = id order),
so a sample is still a pure function of (seed, i) and any rank count gives the same samples. Merges:
sums (`all_reduce_sum`), concatenation in rank order (`all_gather_list`, `gather_list`) and picklable
objects (`all_gather_objects`). Only rank 0 prints results and writes files (`is_main`, `main_first`).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Iterator, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as torch_dist  # present in every torch build (is_available() says whether it works)

from .errors import UserError

T = TypeVar("T")
TIMEOUT_S = 1800  # a rank that waits longer than this for the others fails instead of hanging
_OWNED = False  # whether init() created the process group (then shutdown() destroys it)


def env_world_size() -> int:
    """WORLD_SIZE from the environment (1 when not launched by torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise UserError(f"WORLD_SIZE must be an integer, got {os.environ.get('WORLD_SIZE')!r}.") from None


def active() -> bool:
    """True when a process group with more than one rank is initialised."""
    return torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without torch.distributed)."""
    return torch_dist.get_rank() if active() else 0


def world_size() -> int:
    """Number of ranks (1 without torch.distributed)."""
    return torch_dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that prints and writes files."""
    return rank() == 0


def backend() -> str:
    """'nccl' when CUDA is available, else 'gloo'."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def init() -> bool:
    """Join the process group torchrun described in the environment (when WORLD_SIZE > 1); True if distributed."""
    if env_world_size() <= 1:
        return False
    if not torch_dist.is_available():
        raise UserError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed; run one process.")
    if not torch_dist.is_initialized():
        for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise UserError(f"WORLD_SIZE > 1 but {var} is not set; launch with torchrun --nproc_per_node=P -m artifix ...")
        be = backend()
        if be == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch_dist.init_process_group(be, timeout=timedelta(seconds=TIMEOUT_S))
        global _OWNED
        _OWNED = True
    return active()


def shutdown() -> None:
    """Leave the process group if init() created it (no-op otherwise)."""
    global _OWNED
    if _OWNED and torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
    _OWNED = False


def barrier() -> None:
    """Wait until every rank gets here (no-op in one process)."""
    if active():
        torch_dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the other ranks (e.g. creating a run in a shared store)."""
    if is_main():
        yield
        barrier()
    else:
        barrier()
        yield


def block(n: int, r: int | None = None, world: int | None = None) -> tuple[int, int]:
    """(offset, count) of rank r's contiguous block of n items: sizes differ by at most one, lower ranks first."""
    r = rank() if r is None else r
    w = world_size() if world is None else world
    q, rem = divmod(int(n), w)
    return r * q + min(r, rem), q + (1 if r < rem else 0)


def shard(items: Sequence[T]) -> list[T]:
    """This rank's contiguous block of `items` (all of them in one process)."""
    off, cnt = block(len(items))
    return list(items[off:off + cnt])


def shard_range(start: int, n: int) -> tuple[int, int]:
    """(first sample, count) of this rank's block of the samples start..start+n-1."""
    off, cnt = block(n)
    return start + off, cnt


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if backend() == "nccl" and active() else torch.device("cpu")


def all_reduce_sum(x: Any) -> Any:
    """Elementwise sum over ranks of a numpy array or tensor (same shape on every rank); returned, not in place."""
    if not active():
        return x
    is_np = isinstance(x, np.ndarray)
    t = torch.as_tensor(np.ascontiguousarray(x)) if is_np else x.detach()
    buf = t.to(_device()).clone()
    torch_dist.all_reduce(buf)
    out = buf.cpu()
    return out.numpy() if is_np else out.to(x.device)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable `obj`, in rank order, on every rank ([obj] in one process)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    torch_dist.all_gather_object(out, obj)
    return out


def gather_objects(obj: Any, dst: int = 0) -> list[Any] | None:
    """Every rank's picklable `obj`, in rank order, on rank `dst` (None elsewhere; [obj] in one process)."""
    if not active():
        return [obj]
    out: list[Any] | None = [None] * world_size() if rank() == dst else None
    torch_dist.gather_object(obj, out, dst=dst)
    return out


def all_gather_list(items: Sequence[T]) -> list[T]:
    """The concatenation, in rank order, of every rank's list (one process: the list itself)."""
    return [x for part in all_gather_objects(list(items)) for x in part]


def gather_rows(x: np.ndarray, dst: int = 0) -> np.ndarray | None:
    """Rows of every rank's array concatenated in rank order, on rank `dst` (None elsewhere)."""
    parts = gather_objects(np.ascontiguousarray(x), dst)
    if parts is None:
        return None
    parts = [p for p in parts if p.shape[0]] or parts[:1]
    return np.concatenate(parts)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s picklable `obj` on every rank."""
    if not active():
        return obj
    box = [obj if rank() == src else None]
    torch_dist.broadcast_object_list(box, src=src)
    return box[0]
