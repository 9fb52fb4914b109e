"""Task that keeps the character's FiftyOne review dataset and the catalog in step."""

from __future__ import annotations

from flenwheel.review.datasets import sync_both_ways
from prefect import task
from prefect.cache_policies import NONE

from flenwheel import runtime


@task(name="review-sync", cache_policy=NONE, retries=2, retry_delay_seconds=5)
def sync_review(root: str, configs: str, character: str, run_id: str) -> dict[str, int]:
    """Push new candidates to the FiftyOne dataset; pull reviewers' tags and caption edits into the catalog."""
    ws = runtime.workspace(root, configs)
    return sync_both_ways(ws, ws.catalog(), character, run_id)
