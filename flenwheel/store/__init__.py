"""Where the data lives: content-addressed image files, the workspace (data root and configs), locks, ingest of
source photos, the outputs of a batch, and ``flenwheel doctor`` (does the store hold what the catalog says)."""
