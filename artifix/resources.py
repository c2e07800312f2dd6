"""Where the bundled files are: beside the package in a checkout, inside it in an installed wheel.

A checkout keeps `data/example/` and `dashboard/` next to `artifix/`; a wheel ships them as
`artifix/example_data/` and `artifix/dashboard/` (see `[tool.setuptools.package-dir]` in pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
CHECKOUT = PACKAGE.parent if (PACKAGE.parent / "data" / "example").is_dir() else None


def example_dir() -> Path:
    """The bundled example's folder (weights, model card, segmenter, the maintainers' review)."""
    return CHECKOUT / "data" / "example" if CHECKOUT else PACKAGE / "example_data"


def dashboard_dir() -> Path:
    """The Streamlit dashboard's folder (app.py and its pages)."""
    return CHECKOUT / "dashboard" if CHECKOUT else PACKAGE / "dashboard"
