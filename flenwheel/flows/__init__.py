"""Prefect flows: they orchestrate tasks and read the catalog to skip what is done.

Importing this package sets Prefect defaults that suit an offline machine (no server analytics); an
explicit environment setting wins.
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
