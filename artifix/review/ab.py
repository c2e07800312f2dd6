"""Blind A/B preference study: does a person prefer the repaired image? (GAN Dissection's human test.)

`export_study` writes a folder a reviewer can judge without seeing anything else:
- `pair_NNN_L.png`, `pair_NNN_R.png` (each side) and `pair_NNN.png` (side by side) for every pair;
- `sheet.csv` with columns pair, answer (blank; fill in left / right / same);
- `study.json`: the study id and the pair list, with no hint of which side is which.
The key (per pair: repair or random-unit control, sample index, the side the edited image is on) goes to a
SEPARATE file (default `<folder>-key.json`). Pairs of the repair (before vs after) and of the random-unit
control (before vs control) are mixed and shuffled, and each pair's sides are drawn by a seeded coin.

Answers are recorded per reviewer in the label store (`LabelStore.add_ab_answers`, table `ab_answers`), from
the dashboard's A/B page or `artifix ab import`. `score` reads the key only then and reports, for the repair and
for the control, the win rate among decided pairs (the edited image chosen / left+right answers) with a Wilson
95 % interval, and the tie rate (same / all answers).
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .. import intervals
from ..errors import UserError
from ..io import read_json, write_json_atomic
from ..labels import _replace_dir
from ..model.images import grid, save_png

FORMAT = "artifix-ab-study"
ANSWERS = ("left", "right", "same")


def wilson(k: int, n: int, confidence: float = 0.95) -> list[float]:
    """Wilson score interval [lo, hi] of a binomial proportion k / n ([0, 1] when n = 0), from `artifix.intervals`."""
    if n <= 0:
        return [0.0, 1.0]
    iv = intervals.wilson(k, n, confidence)
    return [float(iv.lo), float(iv.hi)]


def default_key_path(folder: str | Path) -> Path:
    """Where the key goes unless told: a sibling file `<folder>-key.json`."""
    f = Path(folder)
    return f.parent / f"{f.name}-key.json"


def plan_pairs(n_repair: int, n_control: int, seed: int) -> list[dict[str, Any]]:
    """The shuffled pair order with randomised sides: [{'kind', 'item', 'after_side'}], item = row in that kind's images."""
    rng = np.random.default_rng(seed)
    items = [("repair", i) for i in range(n_repair)] + [("control", i) for i in range(n_control)]
    order = rng.permutation(len(items))
    sides = rng.integers(0, 2, len(items))
    return [{"kind": items[j][0], "item": int(items[j][1]), "after_side": "left" if sides[k] else "right"}
            for k, j in enumerate(order)]


def export_study(before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray], samples: Mapping[str, Sequence[int]],
                 folder: str | Path, key_path: str | Path | None = None, seed: int = 0, scale: int = 4,
                 meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write the blind study folder and its separate key; `before/after/samples` are keyed by 'repair' and 'control'."""
    folder = Path(folder)
    key_path = Path(key_path) if key_path else default_key_path(folder)
    if key_path.resolve().is_relative_to(folder.resolve()):
        raise UserError(f"the key {key_path} must not be inside the study folder {folder}: reviewers see that folder.")
    kinds = [k for k in ("repair", "control") if k in before]
    n = {k: len(before[k]) for k in kinds}
    for k in kinds:
        if len(after[k]) != n[k] or len(samples[k]) != n[k]:
            raise UserError(f"the {k} pairs need as many after images and sample indices as before images.")
    pairs = plan_pairs(n.get("repair", 0), n.get("control", 0), seed)
    digest = hashlib.sha256(json.dumps({"pairs": pairs, "samples": {k: list(map(int, samples[k])) for k in kinds},
                                        "meta": dict(meta or {})}, sort_keys=True, default=str).encode())
    for k in kinds:
        digest.update(np.ascontiguousarray(after[k]).tobytes())
    study = digest.hexdigest()[:16]
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file; give a folder for the A/B study.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        rows = []
        for p, pr in enumerate(pairs):
            b, a = before[pr["kind"]][pr["item"]], after[pr["kind"]][pr["item"]]
            left, right = (a, b) if pr["after_side"] == "left" else (b, a)
            save_png(tmp / f"pair_{p:03d}_L.png", grid(left[None], scale=scale))
            save_png(tmp / f"pair_{p:03d}_R.png", grid(right[None], scale=scale))
            save_png(tmp / f"pair_{p:03d}.png", grid(np.stack([left, right]), ncol=2, scale=scale))
            rows.append({"pair": p, "left": f"pair_{p:03d}_L.png", "right": f"pair_{p:03d}_R.png", "both": f"pair_{p:03d}.png"})
        with open(tmp / "sheet.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["pair", "answer"])
            w.writerows([[r["pair"], ""] for r in rows])
        write_json_atomic(tmp / "study.json", {"format": FORMAT, "version": 1, "study": study, "n_pairs": len(rows), "pairs": rows,
                                               "question": "Which image looks better (fewer artifacts)? Answer left, right or same."})
        _replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    key = {"format": FORMAT + "-key", "study": study, "seed": seed, "meta": dict(meta or {}),
           "pairs": [{"pair": p, "kind": pr["kind"], "sample": int(samples[pr["kind"]][pr["item"]]), "after_side": pr["after_side"]}
                     for p, pr in enumerate(pairs)]}
    write_json_atomic(key_path, key)
    return {"study": study, "folder": str(folder), "key": str(key_path), "n_pairs": len(pairs), "counts": n}


def load_study(folder: str | Path) -> dict[str, Any]:
    """study.json of a study folder; a UserError when it is not one."""
    path = Path(folder) / "study.json"
    s = read_json(path, f"{folder} is not an A/B study folder (no readable study.json); write one with 'artifix ab export'.")
    if s.get("format") != FORMAT:
        raise UserError(f"{path} is not an artifix A/B study (format {s.get('format')!r}).")
    return s


def load_key(path: str | Path, study: str) -> dict[str, Any]:
    """The key file of `study`; a UserError when missing or for another study."""
    k = read_json(path, f"no readable A/B key at {path}; give the key file 'artifix ab export' wrote (--key).")
    if k.get("study") != study:
        raise UserError(f"the key {path} belongs to study {k.get('study')!r}, not {study!r}.")
    return k


def read_sheet(path: str | Path, n_pairs: int) -> dict[int, str]:
    """Answers {pair: left/right/same} from a filled sheet.csv; blank answers are skipped, anything else is an error."""
    out: dict[int, str] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"pair", "answer"} <= set(reader.fieldnames):
                raise UserError(f"{path} needs the columns pair and answer (as in the exported sheet.csv).")
            for line, row in enumerate(reader, start=2):
                a = (row.get("answer") or "").strip().lower()
                if not a:
                    continue
                try:
                    p = int(str(row["pair"]).strip())
                except ValueError:
                    raise UserError(f"{path} line {line}: pair must be a number, got {row['pair']!r}.") from None
                if a not in ANSWERS or not 0 <= p < n_pairs:
                    raise UserError(f"{path} line {line}: need a pair in 0..{n_pairs - 1} and an answer left, right or same; "
                                    f"got {row['pair']!r}, {row['answer']!r}.")
                out[p] = a
    except OSError as e:
        raise UserError(f"cannot read the answer sheet {path} ({e.strerror}).") from None
    return out


def score(key: Mapping[str, Any], answers: Any, confidence: float = 0.95) -> dict[str, Any]:
    """Win rate among decided pairs (Wilson interval) and tie rate, for the repair and the control; answers: DataFrame or dict."""
    if isinstance(answers, Mapping):
        rows = [(int(p), str(a), "reviewer") for p, a in answers.items()]
    else:
        rows = [(int(r.pair), str(r.answer), str(r.reviewer)) for r in answers.itertuples()]
    by_pair = {int(p["pair"]): p for p in key["pairs"]}
    out: dict[str, Any] = {"study": key["study"], "reviewers": sorted({r for _, _, r in rows}), "confidence": confidence}
    for kind in ("repair", "control"):
        wins = losses = ties = 0
        for p, a, _ in rows:
            k = by_pair.get(p)
            if k is None or k["kind"] != kind:
                continue
            if a == "same":
                ties += 1
            elif a == k["after_side"]:
                wins += 1
            else:
                losses += 1
        decided, total = wins + losses, wins + losses + ties
        out[kind] = {"wins": wins, "losses": losses, "ties": ties, "answers": total,
                     "pairs": sum(1 for p in key["pairs"] if p["kind"] == kind),
                     "win_rate": wins / decided if decided else float("nan"), "win_ci": wilson(wins, decided, confidence),
                     "tie_rate": ties / total if total else float("nan")}
    return out


def summary_line(res: Mapping[str, Any]) -> str:
    """One sentence of the result."""
    parts = []
    for kind in ("repair", "control"):
        r = res.get(kind)
        if r and r["answers"]:
            parts.append(f"{kind}: preferred in {r['wins']}/{r['wins'] + r['losses']} decided pairs = {r['win_rate']:.0%} "
                         f"[{r['win_ci'][0]:.0%}, {r['win_ci'][1]:.0%}], ties {r['ties']}/{r['answers']} = {r['tie_rate']:.0%}")
    return "; ".join(parts) or "no answers yet"


def card_section(res: Mapping[str, Any]) -> str:
    """Markdown lines for the model card."""
    lines = ["## Blind A/B preference", "",
             "Reviewers saw shuffled before/after pairs with random sides, the random-unit control's pairs mixed in, "
             "the key hidden until they finished. Win rate = the edited image chosen, among pairs not answered 'same' "
             f"(Wilson {res.get('confidence', 0.95):.0%} interval).", "",
             "| pairs of | answers | preferred the edited image | win rate [CI] | ties |", "|---|---|---|---|---|"]
    for kind in ("repair", "control"):
        r = res.get(kind)
        if r:
            wr = "n/a" if not (r["wins"] + r["losses"]) else f"{r['win_rate']:.1%} [{r['win_ci'][0]:.1%}, {r['win_ci'][1]:.1%}]"
            tr = "n/a" if not r["answers"] else f"{r['tie_rate']:.1%}"
            lines.append(f"| {kind} | {r['answers']} | {r['wins']} of {r['wins'] + r['losses']} | {wr} | {tr} |")
    return "\n".join(lines + [""])
