"""Store the images an editor or generator made and record them, with their lineage, in one transaction."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from PIL import Image

from flenwheel.catalog import Catalog, DerivationRecord, ImageRecord
from flenwheel.store.objects import EncodedImage, put_encoded, remove_if_unreferenced
from flenwheel.store.workspace import Workspace


def store_outputs(
    ws: Workspace,
    catalog: Catalog,
    character: str,
    origin: str,
    outputs: Iterable[tuple[Image.Image | EncodedImage, DerivationRecord]],
    run_id: str | None,
    record: Callable[[Any, Sequence[str]], None] | None = None,
) -> list[str]:
    """Store each output image and record all images + derivations in one transaction (editors, generators).

    An output is an image, or its encoded bytes as a cluster worker sent them back (stored as they are).
    ``child_id`` of each derivation is filled in from the stored bytes. If making an output or the catalog
    write fails, the files this call stored are removed again, so a failed batch leaves nothing behind.
    ``record(connection, image_ids)`` writes rows about the outputs in the same transaction.
    """
    images, derivations, stored = [], [], []
    try:
        for image, derivation in outputs:
            s = put_encoded(ws.root, image if isinstance(image, EncodedImage) else EncodedImage.of(image))
            stored.append(s)
            images.append(ImageRecord(s.image_id, character, origin, s.relpath, s.width, s.height))
            derivations.append(dataclasses.replace(derivation, child_id=s.image_id))
        if images:
            ids = [im.image_id for im in images]
            catalog.add_images(images, run_id, derivations, None if record is None else lambda con: record(con, ids))
    except BaseException:
        for s in stored:
            remove_if_unreferenced(ws.root, s)
        raise
    return [im.image_id for im in images]
