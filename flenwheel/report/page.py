"""One self-contained HTML page per report, rendered from a Jinja2 template; images are linked by relative path.

Table cells read as :func:`flenwheel.report.format.cell` says for their column."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from flenwheel.core.files import atomic_write
from flenwheel.report.format import cell

_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,  # titles, paragraphs, captions and cells are text; only summary lines carry markup
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)  # text, escaped on render
    images: list[tuple[Path, str]] = field(default_factory=list)  # (file, caption)
    table: list[dict[str, Any]] = field(default_factory=list)


# Every table cell goes through the one formatting helper, told its column (counts, rates, seconds read as such).
_TEMPLATES.filters["cell"] = cell


def render_html(title: str, summary: list[str], sections: Sequence[Section], path: Path) -> Path:
    """Write the page to ``path``. ``summary`` lines are trusted HTML (they mark results ok/miss)."""
    base = path.parent.resolve()
    rendered = [
        {
            "title": s.title,
            "paragraphs": s.paragraphs,
            "table": s.table,
            "figures": [(Path(os.path.relpath(Path(img).resolve(), base)).as_posix(), cap) for img, cap in s.images],
        }
        for s in sections
    ]
    page = _TEMPLATES.get_template("page.html.j2").render(title=title, summary=summary, sections=rendered)
    atomic_write(path, page.encode("utf-8"))
    return path
