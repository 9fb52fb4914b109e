"""What every command group shares: consoles, one-line errors, the workspace, progress bars, option types.

Import rule for the command modules: engine modules that load torch, diffusers, Prefect or FiftyOne (seconds
each) are imported inside the commands that need them, so ``flenwheel sql`` or ``flenwheel review decide``
start in a fraction of a second; everything else is imported at the top.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from typer.core import TyperGroup

from flenwheel.core.errors import DISK_FULL_ERRNOS, FlenwheelError
from flenwheel.core.types import EditorChoice, ReviewMode, ReviewStage
from flenwheel.store.workspace import Workspace

EXIT_AWAITING_REVIEW = 3


class UserError(FlenwheelError):
    """A wrong command-line argument."""


# Without a terminal rich would wrap at 80 columns; ids and paths read better unwrapped.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class OneLineErrors(TyperGroup):
    """Turn the errors a user can fix into one ``error:`` line on stderr: exit status 2 for a usage or
    configuration problem, 1 for a full disk (the same command finishes once space is freed)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except FlenwheelError as e:
            err.print(f"error: {e}", markup=False)
            raise typer.Exit(e.exit_code) from None
        except OSError as e:
            if e.errno not in DISK_FULL_ERRNOS:
                raise
            where = f" writing {e.filename}" if e.filename else ""
            err.print(f"error: no space left on the device{where}; free space and run again", markup=False)
            raise typer.Exit(1) from None


def group(help_text: str) -> typer.Typer:
    """A command group whose user errors print as one line."""
    return typer.Typer(cls=OneLineErrors, no_args_is_help=True, add_completion=False, help=help_text)


def workspace(ctx: typer.Context) -> Workspace:
    """The invocation's workspace (``--root``/``--configs`` of the top-level command), made once."""
    root_ctx = ctx.find_root()
    if not isinstance(root_ctx.obj, Workspace):
        opts = root_ctx.obj or {}
        root_ctx.obj = Workspace(root=opts.get("root"), configs=opts.get("configs"))
    return root_ctx.obj


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )


def id_list(values: list[str] | None) -> list[str]:
    """Comma-separated values, from one or many options."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def params(model: type[BaseModel], **values: Any) -> Any:
    """Build a flow's pydantic parameters; a bad value becomes one line naming the option."""
    try:
        return model(**values)
    except ValidationError as e:
        first = e.errors()[0]
        raise UserError(f"--{'-'.join(str(x) for x in first['loc']).replace('_', '-')}: {first['msg']}") from None


def _configured(kind: str) -> str:
    """The names configs/ offers here (for --help; each command checks against its own --configs)."""
    try:
        ws = Workspace()
        names = ws.profile_names() if kind == "profiles" else ws.character_names()
    except FlenwheelError:
        return ""
    return f" ({', '.join(names)} here)" if names else ""


CharacterArg = Annotated[str, typer.Argument(help=f"a character of configs/characters{_configured('characters')}")]
ProfileOpt = Annotated[
    str | None, typer.Option("--profile", help=f"a profile of configs/profiles{_configured('profiles')}")
]
EditorOpt = Annotated[
    EditorChoice,
    typer.Option(
        help="qwen (the profile's Qwen-Image-Edit, 2509 or 2511), vibe (VIBE), klein (FLUX.2 [klein] reference "
        "editing), augment (CPU), or configured: the character's editor per prompt category (editors: in its YAML)"
    ),
]
ReviewOpt = Annotated[ReviewMode, typer.Option(help="who decides at review gates")]
StageOpt = Annotated[ReviewStage, typer.Option("--stage", help="which review gate")]
