"""The label store package: `from artifix.labels import LabelStore` (the code is in `store.py` for now)."""

from .store import LabelStore, _replace_dir  # noqa: F401  (_replace_dir: used by artifix.ab)
from .store import LABELS, SCHEMA_VERSION, STATUSES, ApprovedUnit, Run, decode_mask, encode_mask, format_time, parse_time

__all__ = [
    "LABELS", "STATUSES", "SCHEMA_VERSION", "LabelStore", "Run", "ApprovedUnit",
    "encode_mask", "decode_mask", "format_time", "parse_time",
]
