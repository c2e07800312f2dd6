"""Train the example scenes' segmenter on procedural label maps (fixed seed, CPU), and write its card.

    python scripts/train_segmenter.py [--steps 1000] [--out data/example/segmenter.pt]

Training data: `artifix.example.scenes` stream seed 21 (a fixed pool, re-shuffled per epoch); held-out evaluation:
stream seed 22 (never trained on; the example GAN was trained on seed 1 and its reference set is seed 2).
Augmentation (so that blurry, noisy GAN samples still segment): random horizontal flips, brightness and
contrast jitter, Gaussian pixel noise and a random 3x3 blur. Loss: cross-entropy with class weights
proportional to frequency^-0.5 (doors, windows and sun are small). Adam 2e-3, cosine decay to 2e-4.

Resumable: the full training state (weights, optimiser, data order, random streams, step) goes to
`--state` every `--save-every` steps; running again with a larger `--steps` continues from it. At the end
the plain weights go to `--out` (a state dict, loads with weights_only=True) and the card with per-class
IoU on `--eval-n` held-out scenes (plus a trivial baseline and the class proportions the segmenter sees on
the example GAN's samples) to `<out>.json` and `<out stem>_card.md`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from artifix.example import scenes  # noqa: E402
from artifix.concepts.segmenter import SceneSegmenter, Segmenter, confusion, iou_from_confusion  # noqa: E402

TRAIN_SEED = 21
EVAL_SEED = 22
K = len(scenes.CLASSES)


def save_atomic(obj: object, path: Path) -> None:
    """torch.save to a temporary file, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def augment(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip, jitter, blur and noise a float batch x (B, 3, H, W) in [0, 1] with labels y (B, H, W)."""
    b = x.shape[0]
    u = torch.rand(b, 6, generator=gen)
    flip = u[:, 0] < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    y = torch.where(flip[:, None, None], y.flip(-1), y)
    mean = x.mean((1, 2, 3), keepdim=True)
    contrast = (0.75 + 0.5 * u[:, 1]).view(b, 1, 1, 1)
    bright = (u[:, 2] - 0.5).view(b, 1, 1, 1) * 0.2
    x = (x - mean) * contrast + mean + bright
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
    mix = (u[:, 3] * (u[:, 4] < 0.5)).view(b, 1, 1, 1)  # half the images get a blur of random strength
    x = x * (1 - mix) + blurred * mix
    sigma = (u[:, 5] * 0.06).view(b, 1, 1, 1)
    x = x + sigma * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1), y


def evaluate(seg: Segmenter, n: int, batch: int = 250) -> dict:
    """Per-class IoU, pixel accuracy and a trivial baseline (per-position majority class of the training pool) on held-out scenes."""
    cm = torch.zeros(K, K, dtype=torch.int64)
    for b in scenes.stream(EVAL_SEED, n, batch):
        cm += confusion(seg.labels(b.images), torch.from_numpy(b.labels), K)
    iou = iou_from_confusion(cm)
    return {"confusion": cm, "iou": iou, "pixel_accuracy": float(cm.diag().sum() / cm.sum())}


def position_prior(labels: np.ndarray) -> torch.Tensor:
    """The most frequent class at each pixel position (H, W) over a label pool: the trivial baseline."""
    counts = np.stack([(labels == c).sum(0) for c in range(K)])
    return torch.from_numpy(counts.argmax(0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--pool", type=int, default=12000, help="number of distinct training scenes")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-n", type=int, default=1000, help="held-out scenes for the card")
    ap.add_argument("--gan-n", type=int, default=500, help="example GAN samples for the class-proportion comparison")
    ap.add_argument("--out", type=Path, default=Path("data/example/segmenter.pt"))
    ap.add_argument("--state", type=Path, default=Path("runs/segmenter-train.pt"), help="resumable training state")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    pool = [b for b in scenes.stream(TRAIN_SEED, args.pool, batch=250)]
    imgs = torch.from_numpy(np.concatenate([b.images for b in pool])).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW
    labs_np = np.concatenate([b.labels for b in pool])
    labs = torch.from_numpy(labs_np).long()
    print(f"rendered {len(imgs)} training scenes in {time.time() - t0:.1f}s", flush=True)
    freq = torch.bincount(labs.reshape(-1), minlength=K).double() / labs.numel()
    weight = (freq.clamp(min=1e-6) ** -0.5)
    weight = (weight / (weight * freq).sum()).float()  # mean weight per pixel = 1

    model = SceneSegmenter(K, args.width)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    order, cursor, step, log, seconds = torch.randperm(len(imgs), generator=gen), 0, 0, [], 0.0
    if args.state.is_file():
        st = torch.load(args.state, map_location="cpu", weights_only=True)
        if st["width"] != args.width or st["pool"] != args.pool or st["batch"] != args.batch:
            sys.exit(f"{args.state} was written with other --width/--pool/--batch; remove it to start over")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        torch.set_rng_state(st["torch_rng"])
        order, cursor, step, log, seconds = st["order"], int(st["cursor"]), int(st["step"]), json.loads(st["log"]), float(st["seconds"])
        print(f"resumed from {args.state} at step {step}", flush=True)

    def lr_at(s: int) -> float:
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s / max(args.steps, 1), 1.0))))

    def save_state() -> None:
        save_atomic({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(), "torch_rng": torch.get_rng_state(),
                     "order": order, "cursor": cursor, "step": step, "log": json.dumps(log), "seconds": seconds,
                     "width": args.width, "pool": args.pool, "batch": args.batch}, args.state)

    model.train()
    t_train = time.time() - seconds
    while step < args.steps:
        if cursor + args.batch > len(order):
            order, cursor = torch.randperm(len(imgs), generator=gen), 0
        idx = order[cursor:cursor + args.batch]
        cursor += args.batch
        x, y = augment(imgs[idx].float().div_(255.0), labs[idx], gen)
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step)
        loss = F.cross_entropy(model(x), y, weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        seconds = time.time() - t_train
        if step % 25 == 0:
            rec = {"step": step, "loss": round(loss.item(), 4), "lr": round(lr_at(step), 6), "sec": round(seconds, 1)}
            log.append(rec)
            print(json.dumps(rec), flush=True)
        if step % args.save_every == 0 or step == args.steps:
            save_state()
            save_atomic(model.state_dict(), args.out)

    model.eval()
    seg = Segmenter(model, scenes.CLASSES, str(args.out))
    ev = evaluate(seg, args.eval_n)
    prior = position_prior(labs_np)
    cm_b = torch.zeros(K, K, dtype=torch.int64)
    held = np.concatenate([b.labels for b in scenes.stream(EVAL_SEED, args.eval_n, 250)])
    for lab in torch.from_numpy(held):
        cm_b += confusion(prior, lab, K)
    iou_b = iou_from_confusion(cm_b)
    real_prop = torch.bincount(torch.from_numpy(held).reshape(-1).long(), minlength=K).double()
    real_prop = real_prop / real_prop.sum()
    pred_real = ev["confusion"].sum(0).double() / ev["confusion"].sum()
    from artifix.model.generator import load_generator, sample_batches

    g = load_generator()
    gan_counts = torch.zeros(K, dtype=torch.float64)
    for _, im in sample_batches(g, 0, 0, args.gan_n, 100):
        gan_counts += torch.bincount(seg.labels(im.numpy()).reshape(-1), minlength=K).double()
    gan_prop = gan_counts / gan_counts.sum()

    def r(v: float) -> float | None:
        return None if v != v else round(float(v), 4)

    card = {
        "classes": list(scenes.CLASSES),
        "architecture": f"artifix.concepts.segmenter.SceneSegmenter(classes={K}, width={args.width}): 3-level U-Net",
        "parameters": sum(p.numel() for p in model.parameters()),
        "train": {"data": f"artifix.example.scenes stream seed {TRAIN_SEED}, {args.pool} scenes", "steps": step, "batch": args.batch,
                  "lr": args.lr, "seed": args.seed, "threads": args.threads, "train_seconds": round(seconds, 1),
                  "torch": str(torch.__version__), "final_loss": log[-1]["loss"] if log else None},
        "heldout": {"data": f"artifix.example.scenes stream seed {EVAL_SEED}, scenes 0..{args.eval_n - 1}",
                    "iou": {c: r(v) for c, v in zip(scenes.CLASSES, ev["iou"].tolist())},
                    "mean_iou": r(torch.nanmean(ev["iou"]).item()), "pixel_accuracy": round(ev["pixel_accuracy"], 4),
                    "baseline": {"what": "per-position majority class of the training label maps",
                                 "iou": {c: r(v) for c, v in zip(scenes.CLASSES, iou_b.tolist())},
                                 "mean_iou": r(torch.nanmean(iou_b).item()),
                                 "pixel_accuracy": round(float(cm_b.diag().sum() / cm_b.sum()), 4)}},
        "proportions": {"what": f"fraction of pixels per class: true labels of held-out scenes, the segmenter on them, "
                                f"the segmenter on {args.gan_n} example GAN samples (seed 0)",
                        "scenes_true": {c: round(v, 4) for c, v in zip(scenes.CLASSES, real_prop.tolist())},
                        "scenes_predicted": {c: round(v, 4) for c, v in zip(scenes.CLASSES, pred_real.tolist())},
                        "gan_predicted": {c: round(v, 4) for c, v in zip(scenes.CLASSES, gan_prop.tolist())}},
        "log": log,
    }
    args.out.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    rows = "\n".join(
        f"| {c} | {card['heldout']['iou'][c]} | {card['heldout']['baseline']['iou'][c]} | {card['proportions']['scenes_true'][c]} | "
        f"{card['proportions']['scenes_predicted'][c]} | {card['proportions']['gan_predicted'][c]} |" for c in scenes.CLASSES)
    md = f"""# Scene segmenter (example)

`{args.out.name}`: a plain state dict of `{card['architecture']}`, {card['parameters']:,} parameters.
Trained by `python scripts/train_segmenter.py --steps {step}` on {card['train']['data']} ({step} steps of batch {args.batch},
{seconds:.0f} s on {args.threads} shared CPU thread(s)). Held-out: {card['heldout']['data']}.

Mean IoU {card['heldout']['mean_iou']}, pixel accuracy {card['heldout']['pixel_accuracy']} (trivial baseline, the per-position
majority class: mean IoU {card['heldout']['baseline']['mean_iou']}, pixel accuracy {card['heldout']['baseline']['pixel_accuracy']}).

| class | IoU held-out | baseline IoU | true share (scenes) | predicted share (scenes) | predicted share (GAN samples) |
|---|---|---|---|---|---|
{rows}

The last column is informal: GAN samples have no true labels; it shows how much of each class the segmenter
finds on {args.gan_n} samples of the example GAN, against the true shares in real scenes.
"""
    args.out.with_name(args.out.stem + "_card.md").write_text(md)
    print(json.dumps({"mean_iou": card["heldout"]["mean_iou"], "iou": card["heldout"]["iou"], "baseline": card["heldout"]["baseline"]["mean_iou"],
                      "gan": card["proportions"]["gan_predicted"]}), flush=True)
    print(f"done in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
