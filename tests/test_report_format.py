"""Issue 28.2: every report table reads counts as integers, rates as percentages and seconds with the precision
their size deserves, through one helper (``flenwheel.report.format.cell``) told the column."""

from __future__ import annotations

from pathlib import Path

import pytest

from flenwheel.report.format import cell, format_rows
from flenwheel.report.page import Section, render_html


@pytest.mark.parametrize(
    ("column", "value", "text"),
    [
        # counts, as the catalog's DOUBLE metrics hand them back and as Python ints (every table's count columns)
        ("n", 21.0, "21"), ("base n", 6.0, "6"), ("images", 12, "12"), ("passed", 9, "9"), ("attempts", 7, "7"),
        ("jobs", 2, "2"), ("approved", 3.0, "3"), ("candidates", 6, "6"), ("by policy", 4, "4"),
        ("by people", 2, "2"), ("pending", 0, "0"), ("compared", 3, "3"), ("policy overridden", 1, "1"),
        ("verdict pass", 5, "5"), ("verdict no_face", 3.0, "3"), ("failed:preservation", 2.0, "2"),
        ("failed:critic:one-person", 0.0, "0"),
        # rates and shares
        ("pass_rate", 0.5, "50%"), ("verifier_pass_rate", 13 / 21, "61.9%"), ("identity pass", 1.0, "100%"),
        ("critic:photo pass", 0.0, "0%"), ("preservation pass", 0.996, "99.6%"), ("policy share", 0.25, "25%"),
        ("people agree with policy", 2 / 3, "66.7%"), ("base pass_rate", 0.7, "70%"),
        # seconds, memory, means and everything else
        ("seconds_per_edit", 0.0421, "0.042"), ("seconds_per_edit", 1.349, "1.35"), ("s/edit", 12.44, "12.4"),
        ("seconds_per_edit", 311.2, "311"), ("peak_gib", 18.456, "18.46"), ("mean_similarity", 0.61234, "0.612"),
        ("lora mean_similarity", 0.5, "0.500"), ("retries per approved", 0.5, "0.50"), ("anything", None, "-"),
        ("prompt", "bg-blue", "bg-blue"), ("verified", True, "yes"),
    ],
)  # fmt: skip
def test_a_cell_reads_as_its_column_says(column: str, value: object, text: str) -> None:
    assert cell(value, column) == text


def test_report_pages_and_artifacts_format_every_table_cell(tmp_path: Path) -> None:
    table = [
        {"arm": "vibe", "n": 21.0, "pass_rate": 0.619, "seconds_per_edit": 1.349, "peak_gib": None, "failed:faces": 6.0}
    ]
    page = render_html("t", [], [Section("s", table=table)], tmp_path / "index.html").read_text()
    assert "<td>vibe</td><td>21</td><td>61.9%</td><td>1.35</td><td>-</td><td>6</td>" in page
    assert format_rows(table) == [
        {
            "arm": "vibe",
            "n": "21",
            "pass_rate": "61.9%",
            "seconds_per_edit": "1.35",
            "peak_gib": "-",
            "failed:faces": "6",
        }
    ]
