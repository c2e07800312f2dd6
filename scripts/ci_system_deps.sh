#!/usr/bin/env bash
# CI only: a scratch PostgreSQL 15 on localhost for the label store's PostgreSQL test, and Chromium + its driver
# for the dashboard's browser test (Debian packages). Prints the SQLAlchemy URL to use on its last line.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq chromium chromium-driver >/dev/null
fi
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq postgresql >/dev/null
fi
ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
pg_lsclusters -h | grep -q "^$ver main" || pg_createcluster "$ver" main >/dev/null
pg_ctlcluster "$ver" main start 2>/dev/null || true
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='artifix'\"" | grep -q 1 || \
  su postgres -c "psql -qc \"CREATE ROLE artifix LOGIN PASSWORD 'artifix'\""
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='artifix_test'\"" | grep -q 1 || \
  su postgres -c "createdb -O artifix artifix_test"
echo "postgresql+psycopg://artifix:artifix@127.0.0.1:5432/artifix_test"
