"""The ``flenwheel`` command, one module per command group.

:mod:`.catalog` (ingest, sql, lineage, characters, init), :mod:`.identity`, :mod:`.models`, :mod:`.review`,
:mod:`.dataset`, :mod:`.train` (train, train-edit, eval-edit), :mod:`.flywheel` (enrich, flywheel, report,
serve) and :mod:`.demo`. Every command that writes records a ``runs`` row. Errors the user can fix (bad config,
bad input, a busy or foreign catalog) print one line starting with ``error:`` and exit with status 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flenwheel.cli import catalog, dataset, demo, flywheel, identity, models, review, train
from flenwheel.cli.common import OneLineErrors

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


for module in (catalog, flywheel, train, demo):
    module.register(app)
app.add_typer(identity.identity_app, name="identity")
app.add_typer(models.models_app, name="models")
app.add_typer(review.review_app, name="review")
app.add_typer(dataset.dataset_app, name="dataset")


def main() -> None:
    """Console entry point."""
    app()
