"""The label store: reviewers' flags, artifact masks and unit decisions, with history and an audit log.

`LabelStore` is the API; the package is split by concern (no module imports one listed after it):

- `values.py`: labels and statuses, `Run` / `ApprovedUnit`, times, mask encoding, input checks
- `schema.py`: the tables, the audit log's append-only triggers and the schema version (the data model)
- `engine.py`: `StoreEngine` opens a SQLite file or SQLAlchemy URL, retries short transactions, creates and migrates the schema
- `queries.py`: reads on one connection shared by the store and the import (run by id, latest events, undone flags, masks)
- `transfer.py`: `LabelTransfer`, CSV/JSON/PNG-folder import (`import_labels`) and export (`export_labels`)
- `store.py`: `LabelStore`: runs, flags, undo, masks, unit decisions, A/B answers, the audit log, counts
"""

from .schema import SCHEMA_VERSION
from .store import LabelStore
from .transfer import _replace_dir  # noqa: F401  (used by artifix.review.ab)
from .values import LABELS, STATUSES, ApprovedUnit, Run, decode_mask, encode_mask, format_time, parse_time

__all__ = [
    "LABELS", "STATUSES", "SCHEMA_VERSION", "LabelStore", "Run", "ApprovedUnit",
    "encode_mask", "decode_mask", "format_time", "parse_time",
]
