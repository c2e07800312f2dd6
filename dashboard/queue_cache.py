"""The review queue's order, cached on disk: the first page of a later start reads it instead of rendering, featurising
and ordering the whole pool again. Keyed by content: generator fingerprint, layer, seed, pool, statistics sample
count and the classifier file's bytes (a retrained classifier is a new key).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from artifix import session
from artifix.io import sha256_file, sha256_json, write_json_atomic

VERSION = 1


def queue_key(fingerprint: str, layer: str, seed: int, start: int, pool: int, stats_n: int, classifier: str | None) -> str:
    """The content key of one queue order."""
    clf = sha256_file(classifier) if classifier and Path(classifier).is_file() else None
    return sha256_json({"v": VERSION, "g": fingerprint, "layer": layer, "seed": int(seed), "start": int(start), "pool": int(pool),
                        "stats_n": int(stats_n), "classifier": clf})[:24]


def _from_json(d: dict[str, Any]) -> session.Queue:
    ints = lambda m: None if m is None else {int(k): float(v) for k, v in m.items()}  # noqa: E731
    return session.Queue([int(s) for s in d["samples"]], ints(d["priors"]) or {}, ints(d["probability"]), ints(d["realism"]), d["order"])


def cached(cache: str, key: str, compute: Callable[[], session.Queue]) -> session.Queue:
    """The queue stored under `key`, else `compute()` stored there (a damaged file is recomputed)."""
    path = Path(cache) / "dashboard" / f"queue-{key}.json"
    if path.is_file():
        try:
            return _from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError):
            pass
    q = compute()
    write_json_atomic(path, asdict(q))
    return q
