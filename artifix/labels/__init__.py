"""The label store package: `from artifix.labels import LabelStore` (the store itself is in `store.py`)."""

from .store import SCHEMA_VERSION, LabelStore, _replace_dir  # noqa: F401  (_replace_dir: used by artifix.ab)
from .values import LABELS, STATUSES, ApprovedUnit, Run, decode_mask, encode_mask, format_time, parse_time

__all__ = [
    "LABELS", "STATUSES", "SCHEMA_VERSION", "LabelStore", "Run", "ApprovedUnit",
    "encode_mask", "decode_mask", "format_time", "parse_time",
]
