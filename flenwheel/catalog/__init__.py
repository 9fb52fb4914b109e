"""The DuckDB catalog: the single source of truth, and the only place that speaks SQL.

One :class:`Catalog` object per data root, cheap to construct; each method opens the file for one short
read or write transaction. The class is assembled from one mixin per subject (images and lineage,
identity, reviews and gates, dataset versions, LoRAs, iterations, verified edits, captions, quality flags and
coverage, maintenance) on top of
:mod:`.core` (connections, retries, migrations, runs, metrics, user SQL); :mod:`.schema` holds the tables and
views.
"""

from flenwheel.catalog.captions import CaptionsMixin
from flenwheel.catalog.checks import ChecksMixin
from flenwheel.catalog.core import CatalogBusy, CatalogError, code_version, now, sha256_json
from flenwheel.catalog.coverage import CoverageMixin
from flenwheel.catalog.identity import IdentityMixin
from flenwheel.catalog.images import ImagesMixin
from flenwheel.catalog.iterations import IterationsMixin
from flenwheel.catalog.loras import LorasMixin
from flenwheel.catalog.maintenance import MaintenanceMixin
from flenwheel.catalog.records import DerivationRecord, ImageRecord, Lineage
from flenwheel.catalog.reviews import ReviewsMixin
from flenwheel.catalog.schema import ORIGINS, SCHEMA_VERSION, VERDICTS
from flenwheel.catalog.versions import VersionsMixin


class Catalog(
    ImagesMixin,
    IdentityMixin,
    ReviewsMixin,
    VersionsMixin,
    LorasMixin,
    IterationsMixin,
    ChecksMixin,
    CaptionsMixin,
    CoverageMixin,
    MaintenanceMixin,
):
    """The catalog at ``path`` (see the package docstring)."""


__all__ = [
    "ORIGINS", "SCHEMA_VERSION", "VERDICTS", "Catalog", "CatalogBusy", "CatalogError",
    "DerivationRecord", "ImageRecord", "Lineage", "code_version", "now", "sha256_json",
]  # fmt: skip
