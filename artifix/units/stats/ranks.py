"""Merging unit statistics across torch.distributed ranks: on every rank (`all_reduce_`) or on one (`gather`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ...errors import UserError
from .units import UnitStats, _merge_moments


def _dist_active() -> bool:
    return dist.is_available() and dist.is_initialized()


def _comm_device(group: Any) -> torch.device:
    if "nccl" in str(dist.get_backend(group)).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _Comm:
    """The collectives of one merge: to every rank (dst None) or to global rank `dst` only, on the group's device."""

    def __init__(self, dst: int | None, group: Any) -> None:
        self.dst, self.group = dst, group
        self.world = dist.get_world_size(group)
        self.receive = dst is None or dist.get_rank() == dst
        self.dev = _comm_device(group)

    def reduce(self, t: torch.Tensor, op: Any) -> torch.Tensor:
        """`t` reduced with `op` over the ranks, on the CPU (meaningful on receiving ranks)."""
        t = t.to(self.dev).clone()
        if self.dst is None:
            dist.all_reduce(t, op=op, group=self.group)
        else:
            dist.reduce(t, dst=self.dst, op=op, group=self.group)
        return t.cpu()

    def collect(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's `t` in rank order, on the CPU, on receiving ranks (an empty list elsewhere)."""
        t = t.to(self.dev).contiguous()
        parts = [torch.empty_like(t) for _ in range(self.world)] if self.receive else None
        if self.dst is None:
            dist.all_gather(parts, t, group=self.group)
        else:
            dist.gather(t, parts, dst=self.dst, group=self.group)
        return [p.cpu() for p in parts] if parts is not None else []


def _check_ranks(stats: UnitStats, comm: _Comm) -> tuple[set[Any], torch.Tensor]:
    """Every rank must hold stats of the same run, one spatial size and disjoint samples: (spatial sizes, ranks per sample)."""
    sig = (stats._config(), stats.spatial)
    sigs: list[Any] = [None] * comm.world
    dist.all_gather_object(sigs, sig, group=comm.group)
    for cfg, _ in sigs:
        if cfg != sigs[0][0]:
            raise UserError(f"cannot merge unit stats across ranks: ranks hold different configurations "
                            f"({sigs[0][0]!r} vs {cfg!r}).")
    spatials = {sp for _, sp in sigs if sp is not None}
    if len(spatials) > 1:
        raise UserError(f"cannot merge unit stats of layer {stats.layer!r} across ranks: spatial sizes differ "
                        f"({sorted(spatials)}).")
    seen = stats._seen.to(comm.dev, torch.int32)  # how many ranks recorded each sample
    dist.all_reduce(seen, group=comm.group)
    if bool((seen > 1).any()):
        i = int(torch.nonzero(seen > 1)[0]) + stats.start
        raise UserError(f"cannot merge unit stats of layer {stats.layer!r} across ranks: sample {i} was "
                        "recorded on more than one rank.")
    return spatials, seen


def _gather_rows(stats: UnitStats, comm: _Comm) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Per-sample rows padded to the longest shard and gathered: (rows per rank, index parts, max|mean row parts)."""
    dev = comm.dev
    table = stats.samples()
    sizes_list = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(comm.world)]
    dist.all_gather(sizes_list, torch.tensor([table.index.numel()], dtype=torch.int64, device=dev), group=comm.group)
    sizes = torch.cat(sizes_list).cpu()
    kmax = int(sizes.max())
    c = stats.channels
    idx_pad = torch.full((kmax,), -1, dtype=torch.int64)
    rows_pad = torch.zeros(kmax, 2 * c, dtype=torch.float32)
    k = table.index.numel()
    idx_pad[:k] = table.index
    rows_pad[:k, :c] = table.max
    rows_pad[:k, c:] = table.mean
    idx_parts, row_parts = (comm.collect(idx_pad), comm.collect(rows_pad)) if kmax else ([], [])
    return sizes, idx_parts, row_parts


def _collect(stats: UnitStats, dst: int | None, group: Any) -> UnitStats | None:
    """Merge `stats` across the ranks of `group`: on every rank (dst None) or on global rank `dst` only."""
    comm = _Comm(dst, group)
    spatials, seen = _check_ranks(stats, comm)
    # Sketch counts and min/max are sums and extremes.
    bins = comm.reduce(stats.sketch.bins, dist.ReduceOp.SUM)
    lo = comm.reduce(stats.sketch.min, dist.ReduceOp.MIN)
    hi = comm.reduce(stats.sketch.max, dist.ReduceOp.MAX)
    # Moments: gathered and folded in rank order (identical on every receiving rank).
    moments = comm.collect(torch.stack([stats._n.to(torch.float64), stats._sum, stats._m2]))
    sizes, idx_parts, row_parts = _gather_rows(stats, comm)
    if not comm.receive:
        return None

    c = stats.channels
    out = stats.clone()
    out.sketch.bins = bins.to(out.sketch.device)
    out.sketch.min, out.sketch.max = lo, hi
    n, s, m2 = moments[0][0].to(torch.int64), moments[0][1], moments[0][2]
    for part in moments[1:]:
        n, s, m2 = _merge_moments(n, s, m2, part[0].to(torch.int64), part[1], part[2])
    out._n, out._sum, out._m2 = n, s, m2
    out._seen = seen.cpu() > 0
    out.spatial = next(iter(spatials)) if spatials else None
    out._chunks = [(ip[:kr].clone(), rp[:kr, :c].clone(), rp[:kr, c:].clone())
                   for ip, rp, kr in zip(idx_parts, row_parts, sizes.tolist()) if kr]
    out._table = None
    return out


def all_reduce_(stats: UnitStats, group: Any = None) -> UnitStats:
    """Merge `stats` across all ranks in place (every rank ends with the whole run); no-op without torch.distributed."""
    if not _dist_active():
        return stats
    merged = _collect(stats, None, group)
    assert merged is not None
    stats._assign(merged)
    return stats


def gather(stats: UnitStats, dst: int = 0, group: Any = None) -> UnitStats | None:
    """The merge of all ranks' `stats` on global rank `dst` (None elsewhere); `stats` if not distributed."""
    if not _dist_active():
        return stats
    return _collect(stats, dst, group)
