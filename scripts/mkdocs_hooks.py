"""mkdocs hooks: the home page from README.md, the CLI reference generated from the defaults table, and the
bundled example's pictures and model card (outside docs/) as site files."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

EXAMPLE_FILES = ("samples.png", "MODEL_CARD.md", "segmenter_card.md")


def readme_as_index() -> str:
    """README.md with its links rewritten for a page at the site's root (docs/x -> x, data/example/x -> example/x)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    text = re.sub(r"\]\(docs/", "](", text)
    text = text.replace("](data/example/", "](example/").replace("](LICENSE)", "](https://opensource.org/license/mit)")
    return text


def on_files(files, config):  # noqa: ANN001, ANN201  (mkdocs hook signature)
    """Add index.md (README), cli.md (generated) and the example's files to the site."""
    from artifix.cli.reference import markdown

    files.append(File.generated(config, "index.md", content=readme_as_index()))
    files.append(File.generated(config, "cli.md", content=markdown()))
    for name in EXAMPLE_FILES:
        files.append(File.generated(config, f"example/{name}", abs_src_path=str(ROOT / "data" / "example" / name)))
    return files
