"""What every config model shares: strict validation, one error type, the character-name rule."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

from flenwheel.core.errors import FlenwheelError
from flenwheel.core.types import CHARACTER_PATTERN

CHARACTER_NAME = re.compile(CHARACTER_PATTERN)


class ConfigError(FlenwheelError, ValueError):
    """A configuration file or value is wrong; the message is meant for the user as it is."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def validate_character_name(name: str) -> str:
    """Character names become folder names and SQL values: keep them to a safe alphabet."""
    if not CHARACTER_NAME.match(name or ""):
        raise ConfigError(
            f"invalid character name {name!r}: use 1-64 letters, digits, '-' or '_', "
            "starting with a letter or digit (no path separators, quotes or spaces)"
        )
    return name
