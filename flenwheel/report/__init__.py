"""Metrics, plots, image grids and HTML reports, all read from the catalog and the stored images.

:mod:`.plots` (identity statistics and charts), :mod:`.grids` (labelled image grids), :mod:`.page` (the Jinja2
page), :mod:`.iteration` (a flywheel iteration's report), :mod:`.checks` (enrichment per prompt, review gates),
:mod:`.comparison` (editors or editor LoRAs compared on the same jobs).
Everything is written under ``<root>/reports/<character>/``.
"""

from flenwheel.report.grids import image_grid
from flenwheel.report.iteration import IterationReport, iteration_report
from flenwheel.report.page import Section, render_html
from flenwheel.report.plots import TARGET_PASS_RATE, ArmStats, arm_stats, training_curves

__all__ = [
    "TARGET_PASS_RATE", "ArmStats", "IterationReport", "Section", "arm_stats", "image_grid",
    "iteration_report", "render_html", "training_curves",
]  # fmt: skip
