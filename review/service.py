"""The FiftyOne App as a long-lived service, so a flow waiting for review holds no process and no GPU."""

from __future__ import annotations

from collections.abc import Callable

from flenwheel.review import fiftyone
from flenwheel.review.datasets import dataset_name, open_dataset
from flenwheel.store.workspace import Workspace


def app_url(ws: Workspace, character: str | None = None) -> str:
    base = f"http://{ws.settings.review.app_address}:{ws.settings.review.app_port}"
    return f"{base}/datasets/{dataset_name(ws, character)}" if character else base


def serve(ws: Workspace, character: str | None = None, on_ready: Callable[[str], None] | None = None) -> None:
    """Launch the App on the configured address and port and block until interrupted."""
    fo = fiftyone(ws)
    dataset = open_dataset(ws, character) if character else None
    session = fo.launch_app(
        dataset, remote=True, address=ws.settings.review.app_address, port=ws.settings.review.app_port, auto=False
    )
    if on_ready:
        on_ready(app_url(ws, character))
    session.wait(-1)
