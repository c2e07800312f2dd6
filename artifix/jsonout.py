"""Strict JSON: what `--json` prints and what artifix writes parses with any JSON parser (jq, JavaScript).

Python's `json` writes NaN and Infinity, which are not JSON. Here a non-finite number becomes `null`, and the
object holding it gets a sibling `<key>_reason` saying what the value was (for a list, which item).
"""

from __future__ import annotations

import json
import math
from typing import Any


def _why(x: float) -> str:
    return "NaN (undefined: too few samples, no variance, or nothing to measure)" if math.isnan(x) else \
        f"{'+' if x > 0 else '-'}Infinity (not representable in JSON)"


def _plain(x: Any) -> Any:
    """numpy scalars and 0-d arrays as Python numbers; anything else unchanged."""
    if type(x).__module__ == "numpy" and hasattr(x, "item") and getattr(x, "ndim", 0) == 0:
        return x.item()
    return x


def _bad(x: Any) -> bool:
    return isinstance(x, float) and not math.isfinite(x)


def strict(obj: Any) -> Any:
    """A copy of `obj` with every NaN/Infinity replaced by None and explained in a `<key>_reason` field.

    >>> strict({"fd": float("nan"), "ci": [1.0, float("inf")], "n": 3})
    {'fd': None, 'fd_reason': 'NaN (undefined: too few samples, no variance, or nothing to measure)', 'ci_reason': 'item 1: +Infinity (not representable in JSON)', 'ci': [1.0, None], 'n': 3}
    """
    obj = _plain(obj)
    if isinstance(obj, dict):
        out: dict[Any, Any] = {}
        for k, v in obj.items():
            v = _plain(v)
            if _bad(v):
                out[k], out[f"{k}_reason"] = None, _why(v)
                continue
            if isinstance(v, (list, tuple)):
                items = [_plain(x) for x in v]
                bad = [f"item {i}: {_why(x)}" for i, x in enumerate(items) if _bad(x)]
                if bad:
                    out[f"{k}_reason"] = "; ".join(bad)
                out[k] = [strict(x) for x in items]
                continue
            out[k] = strict(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [strict(x) for x in obj]
    return None if _bad(obj) else obj


def dumps(obj: Any, **kw: Any) -> str:
    """`json.dumps` of `strict(obj)` that cannot emit NaN or Infinity (paths and other objects as strings).

    >>> dumps({"kid": float("-inf")}, sort_keys=True)
    '{"kid": null, "kid_reason": "-Infinity (not representable in JSON)"}'
    """
    kw.setdefault("default", str)
    return json.dumps(strict(obj), allow_nan=False, **kw)
