"""Unit statistics across real torch.distributed ranks (2 CPU processes, gloo)."""

import os
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from artifix.errors import UserError
from artifix.units.stats import UnitStats, all_reduce_, gather

N, C, H, W = 23, 3, 4, 5
WORLD = 2


def _acts(i: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(7 + i)
    return torch.relu(torch.randn(C, H, W, generator=g) * torch.tensor([1.0, 10.0, 0.1]).view(C, 1, 1) + 0.2)


def _record(indices, batch_size: int) -> UnitStats:
    s = UnitStats("main.6", C, N, meta={"fingerprint": "f00"})
    indices = list(indices)
    for k in range(0, len(indices), batch_size):
        part = indices[k:k + batch_size]
        s.update(torch.stack([_acts(i) for i in part]), part)
    return s


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        # Uneven shards, different batch sizes per rank.
        mine = list(range(rank, N, WORLD))
        local = _record(mine, 3 + rank)
        gathered = gather(local.clone(), dst=0)
        reduced = all_reduce_(local)
        assert reduced is local
        torch.save(local.state_dict(), os.path.join(out_dir, f"reduced{rank}.pt"))
        assert (gathered is None) == (rank != 0)
        if gathered is not None:
            torch.save(gathered.state_dict(), os.path.join(out_dir, "gathered.pt"))
        # A rank with nothing recorded still takes part.
        empty = UnitStats("main.6", C, N, meta={"fingerprint": "f00"})
        if rank == 1:
            empty = _record([0, 5], 2)
        all_reduce_(empty)
        torch.save(empty.state_dict(), os.path.join(out_dir, f"partial{rank}.pt"))
        nothing = all_reduce_(UnitStats("main.6", C, N, meta={"fingerprint": "f00"}))
        assert nothing.num_recorded == 0 and int(nothing.count.sum()) == 0 and nothing.spatial is None
        # Errors are raised on every rank alike.
        errors = []
        overlapping = _record([4, 5], 2)
        try:
            all_reduce_(overlapping)
        except UserError as e:
            errors.append(str(e))
        other_layer = UnitStats(f"main.{rank}", C, N)
        try:
            all_reduce_(other_layer)
        except UserError as e:
            errors.append(str(e))
        torch.save(errors, os.path.join(out_dir, f"errors{rank}.pt"))
    except Exception:
        with open(os.path.join(out_dir, f"crash{rank}.txt"), "w") as fh:
            fh.write(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def test_all_reduce_and_gather_over_two_gloo_ranks_equal_one_process(tmp_path):
    from tests.test_stats import assert_same

    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    one = _record(range(N), N)
    for name in ("reduced0.pt", "reduced1.pt", "gathered.pt"):
        got = UnitStats.from_state_dict(torch.load(tmp_path / name, weights_only=True))
        assert_same(one, got)
        assert got.meta == {"fingerprint": "f00"}
    for rank in range(WORLD):
        got = UnitStats.from_state_dict(torch.load(tmp_path / f"partial{rank}.pt", weights_only=True))
        assert_same(_record([0, 5], 2), got)
        errors = torch.load(tmp_path / f"errors{rank}.pt", weights_only=True)
        assert len(errors) == 2
        assert "sample 4 was recorded on more than one rank" in errors[0]
        assert "ranks hold different configurations" in errors[1]


def test_helpers_are_identity_without_torch_distributed():
    s = _record(range(4), 2)
    assert all_reduce_(s) is s and gather(s) is s
