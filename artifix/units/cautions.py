"""Cautions where decisions are made: a ranking from too few labels, a unit whose causal effect is not beyond its
interval, a unit that also draws a concept. Approving a unit with a caution needs a note (`check_approval`).

Pure functions over the score table's row (the scores stored with a proposal) and the dissection's concepts.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from .. import defaults
from ..errors import UserError

Z95 = 1.959963984540054  # two-sided 95 % normal quantile of the causal effect's interval


def ranking_caution(n_flagged: int, n_clean: int, need: int | None = None) -> str | None:
    """A sentence when the ranking rests on fewer than `need` flagged or clean samples (how many more of each), else None."""
    need = int(defaults.get("dashboard", "trust_labels") if need is None else need)
    more_f, more_c = max(need - int(n_flagged), 0), max(need - int(n_clean), 0)
    if not (more_f or more_c):
        return None
    want = " and ".join(f"{k} more {what}" for k, what in ((more_f, "artifact"), (more_c, "clean")) if k)
    return (f"This ranking rests on {n_flagged} flagged and {n_clean} clean samples: too few to trust. Flag {want} "
            f"sample{'s' if more_f + more_c > 1 else ''} (at least {need} of each) and score again before approving removals.")


def _num(scores: Mapping[str, Any], key: str) -> float:
    v = scores.get(key)
    return float(v) if isinstance(v, (int, float)) else float("nan")


def unit_cautions(scores: Mapping[str, Any], concepts: Sequence[tuple[str, float]] = (), z: float = Z95) -> list[str]:
    """Why approving this unit needs care: causal effect missing, negative or within its interval; concepts it also draws."""
    out = []
    causal, se = _num(scores, "causal"), _num(scores, "causal_se")
    if not scores:
        out.append("it was proposed without scores: rank the units on the Units page to measure its causal effect.")
    elif math.isnan(causal):
        out.append("its causal effect was not measured (no flagged samples yet, or it was not among the exactly ablated candidates).")
    elif causal <= 0:
        out.append(f"its causal effect is {causal:+.3f} (not positive): removing it does not reduce the flagged artifacts "
                   "more than it changes clean samples.")
    elif not math.isnan(se) and causal - z * se <= 0:
        out.append(f"its causal effect {causal:+.3f} is not beyond its 95 % interval [{causal - z * se:+.3f}, {causal + z * se:+.3f}].")
    for concept, iou in concepts:
        out.append(f"it also draws '{concept}' (IoU {iou:.2f}): removing it may take that away too (collateral).")
    return out


def check_approval(status: str, cautions: Sequence[str], note: str) -> None:
    """Refuse approving a unit with cautions unless the note says why (UserError, one sentence)."""
    if status == "approved" and cautions and not str(note or "").strip():
        raise UserError(f"this unit has {len(cautions)} caution(s) ({cautions[0]}); write a note saying why you approve it anyway.")


def stored_cautions(store: Any, run_id: int) -> dict[tuple[str, int], list[str]]:
    """{(layer, unit): cautions} from the scores stored with each proposal (units proposed without scores are left out)."""
    dec = store.unit_decisions(run_id)
    out: dict[tuple[str, int], list[str]] = {}
    for r in dec.itertuples():
        sc = r.scores if isinstance(r.scores, Mapping) else None  # the store decodes them; None when proposed without
        if sc:
            out[(str(r.layer), int(r.unit))] = unit_cautions(sc)
    return out


def check_approved(store: Any, run_id: int, approved: Sequence[Any]) -> None:
    """Refuse (UserError) a repair of these approved units when one carries cautions but was approved without a note."""
    cautions = stored_cautions(store, run_id)
    for a in approved:
        c = cautions.get((a.layer, int(a.unit)), [])
        if c and not str(a.note or "").strip():
            raise UserError(f"unit {a.unit} of {a.layer} was approved by {a.reviewer} without a note although {c[0][:-1]}; "
                            "approve it again with a note saying why (dashboard, or Run.approve(units, note=...)), or reject it.")
