#!/usr/bin/env bash
# Create .venv and install artifix (editable) with its pinned dependencies. `setup.sh dev` adds the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
if [ "${1:-}" = "dev" ]; then .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt; fi
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
