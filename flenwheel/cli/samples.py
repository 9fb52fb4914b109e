"""Sample photos that ship inside installed packages, for the offline demo.

Nothing here comes from the network or from ../shared: scikit-image ships NASA's portrait of astronaut
Eileen Collins (public domain) and matplotlib ships the portrait of Grace Hopper (public domain).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


SAMPLES: dict[str, tuple[str, str]] = {
    # character -> (package, path inside it)
    "astronaut": ("skimage", "data/astronaut.png"),
    "hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
}


def sample_photos() -> dict[str, list[Path]]:
    """Sample photos per demo character."""
    out: dict[str, list[Path]] = {}
    for character, (package, rel) in SAMPLES.items():
        path = _package_dir(package) / rel
        if not path.is_file():
            raise RuntimeError(f"sample photo {rel} is missing from the installed {package}")
        out.setdefault(character, []).append(path)
    return out
