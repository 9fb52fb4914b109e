"""How a value reads in every report table: the HTML pages, the Prefect table artifacts and the CLI's tables.

One helper, :func:`cell`, so a count never reads 21.000 on one page and 21 in the terminal. What a value is
comes from its column's name, because the catalog's ``metrics`` hold every value as a DOUBLE (an edit count
comes back as 21.0):

* counts (``n``, ``edits``, ``attempts``, ``approved``, ``verdict pass``, ``failed:preservation``, ...) as
  integers;
* rates and shares (``pass_rate``, ``identity pass``, ``policy share``, ``adherence``, ...) as percentages, one decimal
  unless the percentage is whole;
* seconds with the precision their size deserves (0.042, 1.35, 12.4, 311);
* GiB with two decimals; anything else with three (similarities, ratios); ``-`` for nothing.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

Kind = Literal["count", "percent", "seconds", "gib", "ratio", "number"]

# Last words of count columns. "passed" is a count ("passed 13"), a trailing "pass" a rate ("identity pass").
_COUNT_WORDS = {
    "n", "edits", "images", "passed", "attempts", "jobs", "approved", "rejected", "candidates", "pending",
    "compared", "overridden", "policy", "people", "source", "enriched", "synthetic", "members", "checked",
}  # fmt: skip
_COUNT_PREFIXES = ("verdict", "failed")  # "verdict no_face", "failed:preservation": how many had it
_RATE_WORDS = {"rate", "share", "agree", "agreement", "adherence"}


def _words(column: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", column.lower()) if w]


def column_kind(column: str) -> Kind:
    """What the values of ``column`` are, read from its name (the rules in the module docstring)."""
    words = _words(column)
    if not words:
        return "number"
    if words[0] in _COUNT_PREFIXES:
        return "count"
    if "seconds" in words or words[0] == "s":  # seconds_per_edit, "s/edit"
        return "seconds"
    if "gib" in words:
        return "gib"
    if _RATE_WORDS & set(words) or words[-1] == "pass":
        return "percent"
    if "per" in words:  # retries per approved, attempts_per_job: a mean of counts
        return "ratio"
    if words[-1] in _COUNT_WORDS:
        return "count"
    return "number"


def percent(value: float) -> str:
    """0.5 -> '50%', 0.619 -> '61.9%': a whole percentage without decimals, else one."""
    pct = value * 100
    return f"{pct:.0f}%" if abs(pct - round(pct)) < 0.05 else f"{pct:.1f}%"


def seconds(value: float) -> str:
    """Three significant digits at most, never fewer decimals than a whole second needs."""
    for below, decimals in ((1, 3), (10, 2), (100, 1)):
        if abs(value) < below:
            return f"{value:.{decimals}f}"
    return f"{value:.0f}"


def cell(value: Any, column: str = "") -> str:
    """How ``value`` reads in a table cell of ``column``: '-' for nothing, JSON for structures, and numbers as
    the column's kind says (:func:`column_kind`)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str)
    if not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    kind = column_kind(column)
    if kind == "percent":
        return percent(float(value))
    if kind == "seconds":
        return seconds(float(value))
    if kind == "count" and float(value).is_integer():
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    return f"{value:.2f}" if kind in ("gib", "ratio", "count") else f"{value:.3f}"


def format_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """``rows`` with every value as its table cell reads (for tables that are shown as they are stored, such as
    Prefect's table artifacts)."""
    return [{k: cell(v, k) for k, v in row.items()} for row in rows]
