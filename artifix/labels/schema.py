"""The label store's on-disk schema: its tables, the audit log's append-only triggers and the schema version.

Data model (every table keeps history; nothing is updated in place except a run's `n`/image size):

- `runs`: one row per (generator fingerprint, layer set, seed); never keyed by a user-chosen name.
- `flags`: every flag event (sample, label, reviewer, time). The current label of a sample is its latest
  event by (time, id) over all reviewers; `reviewer_flags` gives each reviewer's latest.
- `masks`: painted artifact regions (packed bits, zlib). The latest mask per (sample, reviewer) counts;
  `mask(run, sample)` is the union of those over reviewers.
- `unit_decisions`: proposed / approved / rejected events per (layer, unit); the latest wins.
- `audit`: append-only log, one row written in the same transaction as every change. SQLite and
  PostgreSQL triggers reject UPDATE and DELETE on it (PostgreSQL also TRUNCATE); a DROP TABLE by someone
  with owner rights is not prevented.
- `ab_answers`: blind A/B preference answers (artifix.review.ab).
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["SCHEMA_VERSION", "metadata", "schema_version", "runs_t", "flags_t", "masks_t", "units_t", "audit_t", "ab_answers_t"]

SCHEMA_VERSION = 2  # 2: the ab_answers table (blind A/B preference answers); older stores gain it on open
PG_LOCK_KEY = 0x4152_5446  # advisory lock taken while creating the schema on PostgreSQL

metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version", metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied", sa.BigInteger, nullable=False),
)

runs_t = sa.Table(
    "runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run_key", sa.String(64), nullable=False, unique=True),  # sha256 of (fingerprint, layer set, seed)
    sa.Column("fingerprint", sa.String(200), nullable=False),
    sa.Column("layers", sa.Text, nullable=False),  # JSON list, in the order first registered
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer),
    sa.Column("width", sa.Integer),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("meta", sa.Text, nullable=False),
    sa.CheckConstraint("n >= 1", name="runs_n_positive"),
    sa.CheckConstraint("(height IS NULL AND width IS NULL) OR (height >= 1 AND width >= 1)", name="runs_size"),
)

flags_t = sa.Table(
    "flags", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False),
    sa.Column("sample", sa.Integer, nullable=False),
    sa.Column("label", sa.String(16), nullable=False),
    sa.Column("reviewer", sa.String(100), nullable=False),
    sa.Column("time", sa.BigInteger, nullable=False),
    sa.CheckConstraint("sample >= 0", name="flags_sample"),
    sa.CheckConstraint("label IN ('artifact', 'clean', 'unsure')", name="flags_label"),
    sa.Index("ix_flags_run_sample", "run_id", "sample", "time", "id"),
)

masks_t = sa.Table(
    "masks", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False),
    sa.Column("sample", sa.Integer, nullable=False),
    sa.Column("reviewer", sa.String(100), nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("encoding", sa.String(32), nullable=False),
    sa.Column("pixels", sa.Integer, nullable=False),  # number of marked pixels
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("time", sa.BigInteger, nullable=False),
    sa.CheckConstraint("sample >= 0", name="masks_sample"),
    sa.Index("ix_masks_run_sample", "run_id", "sample", "reviewer", "time", "id"),
)

units_t = sa.Table(
    "unit_decisions", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False),
    sa.Column("layer", sa.String(300), nullable=False),
    sa.Column("unit", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reviewer", sa.String(100), nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("scores", sa.Text),  # JSON object or NULL
    sa.Column("time", sa.BigInteger, nullable=False),
    sa.CheckConstraint("unit >= 0", name="units_unit"),
    sa.CheckConstraint("status IN ('proposed', 'approved', 'rejected')", name="units_status"),
    sa.Index("ix_units_run_unit", "run_id", "layer", "unit", "time", "id"),
)

audit_t = sa.Table(
    "audit", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("time", sa.BigInteger, nullable=False),
    sa.Column("actor", sa.String(100), nullable=False),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id")),
    sa.Column("detail", sa.Text, nullable=False),  # JSON object
    sa.Index("ix_audit_run", "run_id", "id"),
)

ab_answers_t = sa.Table(  # blind A/B preference study answers (artifix.review.ab); latest per (study, pair, reviewer) counts
    "ab_answers", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("study", sa.String(64), nullable=False),  # the study's content id (study.json)
    sa.Column("pair", sa.Integer, nullable=False),
    sa.Column("answer", sa.String(8), nullable=False),
    sa.Column("reviewer", sa.String(100), nullable=False),
    sa.Column("time", sa.BigInteger, nullable=False),
    sa.CheckConstraint("pair >= 0", name="ab_pair"),
    sa.CheckConstraint("answer IN ('left', 'right', 'same')", name="ab_answer"),
    sa.Index("ix_ab_study_pair", "study", "reviewer", "pair", "time", "id"),
)

SQLITE_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
)
PG_TRIGGERS = (
    "CREATE OR REPLACE FUNCTION artifix_audit_append_only() RETURNS trigger AS $$ "
    "BEGIN RAISE EXCEPTION 'the audit log is append-only'; END; $$ LANGUAGE plpgsql",
    "DROP TRIGGER IF EXISTS audit_no_change ON audit",
    "CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit "
    "FOR EACH ROW EXECUTE FUNCTION artifix_audit_append_only()",
    "DROP TRIGGER IF EXISTS audit_no_truncate ON audit",
    "CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit "
    "FOR EACH STATEMENT EXECUTE FUNCTION artifix_audit_append_only()",
)
