"""Where a result's numbers came from: reference data, feature space, classifier, flags snapshot, artifix version, device.

`provenance(...)` builds the block every manifest and report carries (`"provenance"`); `markdown(...)` renders it for
report.md, the model card and the gate summary. Nothing here measures anything; hashing a reference folder reads
its files once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping

from . import __version__
from .io import sha256_file, sha256_json
from .profiles import default_profile


def reference(real: Any, metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The reference data: path (or the default profile's own images), sha256 of its bytes, and the number of images the metrics used."""
    n = next((int(r["n_real"]) for r in (metrics or {}).values() if isinstance(r, Mapping) and r.get("n_real")), None)
    if (real is None or str(real) == "") and metrics is not None and n is None:
        return {"kind": "none", "path": None, "n": None, "sha256": None, "note": "no reference-based metric was computed"}
    if real is None or str(real) == "":  # the metrics' real=None: the default profile's own images
        ref = default_profile().reference
        if ref is None:
            return {"kind": "none", "path": None, "n": None, "sha256": None, "note": "no reference data"}
        where = {k: v for k, v in ref.describe.items() if k not in ("kind", "n")}
        return {"kind": ref.label, "path": None, **where, "n": n, "sha256": None, "note": ref.note}
    if not isinstance(real, (str, Path)):  # precomputed RealStats
        src = dict(getattr(real, "source", {}) or {})
        return {"kind": "statistics", "path": src.get("path"), "n": n or getattr(real, "n", None),
                "sha256": sha256_json(getattr(real, "fingerprint", {})), "note": "hash of the statistics' fingerprint"}
    p = Path(real)
    if p.is_file():
        return {"kind": "file", "path": str(p.resolve()), "n": n, "sha256": sha256_file(p)}
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(str(f.relative_to(p)).encode() + b"\0" + bytes.fromhex(sha256_file(f)))
        return {"kind": "folder", "path": str(p.resolve()), "n": n, "sha256": h.hexdigest(),
                "note": "sha256 over the sorted relative file names and each file's sha256"}
    return {"kind": "missing", "path": str(p), "n": n, "sha256": None}


def feature_spaces(metrics: Mapping[str, Any] | None) -> dict[str, str]:
    """Metric name -> the feature space it was computed in (SWD works on pixels)."""
    out = {}
    for name, r in (metrics or {}).items():
        if isinstance(r, Mapping) and "diff" in r:
            out[name] = str(r.get("features") or ("pixels (Laplacian pyramid patches)" if name.startswith("swd") else "?"))
    return out


def classifier(clf: Any) -> dict[str, Any] | None:
    """The artifact classifier: file and its sha256 (when loaded from one), content hash, backbone and cross-validated AUC."""
    if clf is None:
        return None
    src = dict(getattr(clf, "source", None) or {})
    rep = dict(getattr(clf, "report", {}) or {})
    d = clf.to_dict()
    content = hashlib.sha256(str(d["meta_json"]).encode())
    for k in ("coef", "mean", "scale"):
        content.update(d[k].numpy().tobytes())
    return {"path": src.get("path"), "sha256": src.get("sha256"), "content_sha256": content.hexdigest(),
            "features": getattr(clf, "features", None), "cv_auc": rep.get("auc"), "n_pos": rep.get("n_pos"), "n_neg": rep.get("n_neg")}


def flags_snapshot(flagged: Any, clean: Any, masks: int | None = None) -> dict[str, Any]:
    """The labels the run used: counts and a hash of the sorted sample ids per label."""
    f, c = sorted(int(i) for i in flagged), sorted(int(i) for i in clean)
    return {"artifact": len(f), "clean": len(c), "masks": masks, "sha256": sha256_json({"artifact": f, "clean": c})}


def provenance(*, real: Any = None, metrics: Mapping[str, Any] | None = None, clf: Any = None, flagged: Any = (),
               clean: Any = (), masks: int | None = None, device: str | None = None) -> dict[str, Any]:
    """The provenance block of a manifest or report."""
    return {"reference": reference(real, metrics), "feature_space": feature_spaces(metrics), "classifier": classifier(clf),
            "flags": flags_snapshot(flagged, clean, masks), "artifix_version": __version__, "device": device or "cpu"}


def markdown(p: Mapping[str, Any]) -> str:
    """The provenance block as Markdown bullet lines."""
    ref, clf, fl = p.get("reference") or {}, p.get("classifier"), p.get("flags")
    where = ref.get("path") or (f"{ref.get('kind')} (seed {ref.get('seed')})" if ref.get("seed") is not None else str(ref.get("kind")))
    sha = f"sha256 `{ref['sha256'][:16]}…`" if ref.get("sha256") else (ref.get("note") or "no hash")
    spaces = sorted(set((p.get("feature_space") or {}).values()))
    lines = ["## Provenance", "",
             f"- reference data: `{where}`, {sha}, n = {ref.get('n')}",
             f"- feature space: {', '.join(spaces) or 'none'}",
             "- artifact classifier: " + ("none" if not clf else
                                          f"`{clf.get('path') or '(in memory)'}`"
                                          + (f" sha256 `{clf['sha256'][:16]}…`" if clf.get("sha256") else "")
                                          + f", content sha256 `{clf['content_sha256'][:16]}…`, cross-validated ROC-AUC "
                                          + (f"{clf['cv_auc']:.3f}" if isinstance(clf.get("cv_auc"), (int, float)) else "n/a")),
             "- flags snapshot: none (not read)" if not fl else f"- flags snapshot: {fl.get('artifact')} artifact, {fl.get('clean')} clean"
             + (f", {fl['masks']} painted" if fl.get("masks") is not None else "") + f", sha256 `{str(fl.get('sha256'))[:16]}…`",
             f"- artifix {p.get('artifix_version')}, device {p.get('device')}", ""]
    return "\n".join(lines)
