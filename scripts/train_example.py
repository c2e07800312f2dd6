"""Train the bundled example DCGAN on procedural scenes (fixed seed, CPU).

    python scripts/train_example.py [--steps 6000] [--out data/example/dcgan_scenes.pt]
    python scripts/train_example.py --resume data/example/dcgan_scenes.pt --steps 8000 --out runs/long.pt

Recipe: the PyTorch DCGAN tutorial (BCE loss, Adam 2e-4, betas (0.5, 0.999), batch 64, N(0, 0.02)
init), 64x64 procedural scenes from `artifix.example.scenes` stream seed 1 (a fixed pool, re-shuffled per
epoch). Writes a DCGAN-tutorial-style checkpoint {'netG_state_dict', 'netD_state_dict', ...} every
`--save-every` steps (atomically), so a partial run is usable, plus a JSON log of losses and times.
The optimiser states go to a separate `<out>.opt.pt`, so the generator file stays small.
`--resume` continues a checkpoint up to `--steps` in all: G and D from it, the Adam states from its
`.opt.pt` when present (fresh otherwise), the log extended; the data order is re-drawn from `--seed` plus
the resumed step, so a resumed run is reproducible but not identical to an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from artifix.example import scenes  # noqa: E402
from artifix.example.model import NDF, NGF, NZ, make_discriminator, make_generator  # noqa: E402

DATA_SEED = 1


def weights_init(m: nn.Module) -> None:
    """DCGAN-tutorial initialisation."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save to a temporary file, then rename over the target."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def opt_path(ckpt: Path) -> Path:
    """Where the optimiser states of a checkpoint live."""
    return ckpt.with_suffix(".opt.pt")


def resume(ckpt: Path | None, G: nn.Module, D: nn.Module, optG: torch.optim.Optimizer, optD: torch.optim.Optimizer) -> tuple[int, list[dict], float]:
    """Load a checkpoint's weights (and optimiser states when saved); return (steps done, log, train seconds)."""
    if ckpt is None:
        return 0, [], 0.0
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    G.load_state_dict(state["netG_state_dict"])
    D.load_state_dict(state["netD_state_dict"])
    steps = int(state["meta"]["steps"])
    if opt_path(ckpt).exists():
        opt = torch.load(opt_path(ckpt), map_location="cpu", weights_only=True)
        optG.load_state_dict(opt["optG"])
        optD.load_state_dict(opt["optD"])
        print(f"resumed optimiser states of step {opt['steps']}", flush=True)
    log_path = ckpt.with_suffix(".log.json")
    log = json.loads(log_path.read_text())["log"] if log_path.exists() else []
    print(f"resuming from {ckpt} at step {steps}", flush=True)
    return steps, log, float(state["meta"].get("train_seconds", 0.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--pool", type=int, default=40000, help="number of distinct training scenes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("data/example/dcgan_scenes.pt"))
    ap.add_argument("--resume", type=Path, default=None, help="checkpoint to continue from")
    ap.add_argument("--keep", action="store_true",
                    help="also keep every saved generator as <out>.step<N>.pt (a run that diverges late keeps its good steps)")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    pool = np.concatenate([b.images for b in scenes.stream(DATA_SEED, args.pool, batch=250)])
    pool_t = torch.from_numpy(pool).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW
    t_render = time.time() - t0
    print(f"rendered {len(pool)} scenes in {t_render:.1f}s", flush=True)

    G, D = make_generator(), make_discriminator()
    G.apply(weights_init)
    D.apply(weights_init)
    optG = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optD = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    start, log, base_sec = resume(args.resume, G, D, optG, optD)
    gen = torch.Generator().manual_seed(args.seed + start)
    ones, zeros = torch.ones(args.batch), torch.zeros(args.batch)
    order = torch.randperm(len(pool_t), generator=gen)
    cursor = 0
    t_train = time.time() - base_sec
    for step in range(start + 1, args.steps + 1):
        if cursor + args.batch > len(order):
            order, cursor = torch.randperm(len(pool_t), generator=gen), 0
        idx = order[cursor : cursor + args.batch]
        cursor += args.batch
        real = pool_t[idx].float().div_(127.5).sub_(1.0)
        z = torch.randn(args.batch, NZ, 1, 1, generator=gen)
        fake = G(z)
        optD.zero_grad(set_to_none=True)
        lossD = bce(D(real), ones) + bce(D(fake.detach()), zeros)
        lossD.backward()
        optD.step()
        optG.zero_grad(set_to_none=True)
        lossG = bce(D(fake), ones)
        lossG.backward()
        optG.step()
        if step % 50 == 0:
            rec = {"step": step, "lossD": round(lossD.item(), 4), "lossG": round(lossG.item(), 4), "sec": round(time.time() - t_train, 1)}
            log.append(rec)
            print(json.dumps(rec), flush=True)
        if step % args.save_every == 0 or step == args.steps:
            meta = {
                "recipe": "DCGAN tutorial (BCE, Adam 2e-4 b1=0.5), batch %d" % args.batch,
                "steps": step,
                "train_seconds": round(time.time() - t_train, 1),
                "render_seconds": round(t_render, 1),
                "threads": args.threads,
                "data": f"artifix.example.scenes stream seed {DATA_SEED}, {args.pool} scenes",
                "nz": NZ,
                "ngf": NGF,
                "ndf": NDF,
                "seed": args.seed,
                "torch": str(torch.__version__),
                "resumed_from": None if args.resume is None else {"path": str(args.resume), "steps": start},
            }
            save_atomic({"netG_state_dict": G.state_dict(), "netD_state_dict": D.state_dict(), "meta": meta}, args.out)
            if args.keep:
                save_atomic({"netG_state_dict": G.state_dict(), "meta": meta}, args.out.with_suffix(f".step{step}.pt"))
            save_atomic({"optG": optG.state_dict(), "optD": optD.state_dict(), "steps": step}, opt_path(args.out))
            args.out.with_suffix(".log.json").write_text(json.dumps({"meta": meta, "log": log}, indent=1))
    print(f"done in {time.time() - t_train:.0f}s", flush=True)


if __name__ == "__main__":
    main()
