#!/usr/bin/env python3
"""Run artifix from a checkout without installing: `python cli.py <command> ...` (same as the `artifix` command)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from artifix.cli.entry import main  # noqa: E402

if __name__ == "__main__":
    main()
