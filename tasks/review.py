"""Task that keeps the character's FiftyOne review dataset and the catalog in step."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from flenwheel.review.datasets import sync_both_ways
from flenwheel.store.workspace import RunContext


@task(name="review-sync", cache_policy=NONE, retries=2, retry_delay_seconds=5)
def sync_review(ctx: RunContext) -> dict[str, int]:
    """Push new candidates to the FiftyOne dataset; pull reviewers' tags and caption edits into the catalog."""
    return sync_both_ways(ctx.ws, ctx.catalog(), ctx.character, ctx.run_id)
