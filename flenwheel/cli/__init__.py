"""The ``flenwheel`` command, one module per command group.

:mod:`.catalog` (ingest, sql, lineage, characters, init), :mod:`.identity`, :mod:`.models`, :mod:`.review`,
:mod:`.dataset`, :mod:`.train` (train, train-edit, eval-edit), :mod:`.evaluate`, :mod:`.flywheel` (enrich, flywheel,
report, serve) and :mod:`.demo`. Every command that writes records a ``runs`` row. Errors the user can fix (bad config,
bad input, a busy or foreign catalog) print one line starting with ``error:`` and exit with status 2.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Annotated

import typer

from flenwheel.cli import catalog, dataset, demo, evaluate, flywheel, identity, models, review, train
from flenwheel.cli.common import OneLineErrors
from flenwheel.flows.setup import private_defaults

app = typer.Typer(
    cls=OneLineErrors,
    no_args_is_help=True,
    add_completion=False,
    help="flenwheel: curated, versioned character training sets and LoRAs, with lineage for everything.",
)


@app.callback()
def _options(
    ctx: typer.Context,
    root: Annotated[
        Path | None, typer.Option("--root", help="data root (default: FLENWHEEL_HOME, else ./datasets)")
    ] = None,
    configs: Annotated[
        Path | None, typer.Option("--configs", help="config folder (default: FLENWHEEL_CONFIGS, else ./configs)")
    ] = None,
) -> None:
    ctx.obj = {"root": root, "configs": configs}


for module in (catalog, flywheel, train, evaluate, demo):
    module.register(app)
app.add_typer(identity.identity_app, name="identity")
app.add_typer(models.models_app, name="models")
app.add_typer(review.review_app, name="review")
app.add_typer(dataset.dataset_app, name="dataset")


def main() -> None:
    """Console entry point."""
    _light_spawned_children()
    private_defaults()  # before any command imports Prefect
    app()


def _light_spawned_children() -> None:
    """Let spawned children (the identity scoring workers) skip re-running the console script.

    multiprocessing's spawn re-runs a main module given by path in every child before the child does anything
    else; for the console script that means importing the whole CLI (12 s of CPU, 28 s on a busy 2-core
    machine), during which a child cannot yet watch its parent and outlives a killed command. A main module
    named ``flenwheel.__main__`` is skipped (``multiprocessing.spawn._fixup_main_from_name``), and it is what
    this script runs: ``python -m flenwheel`` does the same.
    """
    main_module = sys.modules.get("__main__")
    if main_module is not None and getattr(main_module, "__spec__", None) is None:
        main_module.__spec__ = importlib.util.find_spec("flenwheel.__main__")
