"""Where configuration and data live for one invocation, and how YAML files become validated models.

The data root is chosen by ``--root`` over ``FLENWHEEL_HOME`` over ``settings.root``; the config folder by
``--configs`` over ``FLENWHEEL_CONFIGS`` over ``./configs`` over the defaults shipped inside the package
(``flenwheel.defaults``, this repository's configs/), so a wheel install works out of the box and
``flenwheel init DIR`` writes a starter copy to edit.
"""

from __future__ import annotations

import importlib.resources
import os
import re
import shutil
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from flenwheel.catalog import Catalog
from flenwheel.core.config import (
    ENRICH_CATEGORIES,
    EVALUATION_CATEGORIES,
    SYNTHETIC_CATEGORIES,
    Character,
    ConfigError,
    EvaluationLibrary,
    LoraLibrary,
    LoraSpec,
    Profile,
    PromptEntry,
    PromptLibrary,
    Settings,
    validate_character_name,
)
from flenwheel.core.types import HUB_ID_PATTERN


def default_configs() -> Path:
    """The configs shipped with flenwheel (the repository's configs/ in a checkout)."""
    return Path(str(importlib.resources.files("flenwheel.defaults")))


def write_starter_configs(target: Path) -> list[Path]:
    """Copy the shipped configs into ``target`` (which must not exist yet); returns the files written."""
    if target.exists():
        raise ConfigError(f"{target} already exists: choose a new folder (nothing was written)")
    shutil.copytree(default_configs(), target, ignore=shutil.ignore_patterns("__init__.py", "__pycache__"))
    return sorted(p for p in target.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- loading


def _format_validation_error(path: Path, err: ValidationError) -> str:
    problems = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            problems.append(f"unknown key '{key}'")
        elif e["type"] == "missing":
            problems.append(f"missing key '{key}'")
        else:
            got = e.get("input")
            got_s = f" (got {got!r})" if not isinstance(got, dict | list) else ""
            problems.append(f"key '{key}': {e['msg']}{got_s}")
    return f"{path}: " + "; ".join(problems)


def _allowed_keys(model: type[BaseModel]) -> str:
    return ", ".join(model.model_fields)


M = TypeVar("M", bound=BaseModel)


def load_yaml_model(path: Path, model: type[M], defaults: dict[str, Any] | None = None) -> M:
    """Read one YAML file into ``model``; every failure becomes a one-line :class:`ConfigError`.

    Parsed files are cached by path and modification time: tasks read the same libraries many times.
    """
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = None
    if stamp is None or defaults:
        return _load_yaml_model(path, model, defaults)
    return _cached_yaml_model(path, model, stamp)


@lru_cache(maxsize=256)
def _cached_yaml_model(path: Path, model: type[M], stamp: int) -> M:
    return _load_yaml_model(path, model, None)


def _load_yaml_model(path: Path, model: type[M], defaults: dict[str, Any] | None) -> M:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys ({_allowed_keys(model)})")
    data = {**(defaults or {}), **data}
    try:
        return model.model_validate(data)
    except ValidationError as e:
        msg = _format_validation_error(path, e)
        if any(x["type"] == "extra_forbidden" for x in e.errors()):
            msg += f"; allowed keys: {_allowed_keys(model)}"
        raise ConfigError(msg) from None


class Workspace:
    """Resolved settings, data root and config folder for one invocation (see the module docstring)."""

    def __init__(self, root: Path | str | None = None, configs: Path | str | None = None) -> None:
        self.configs_dir = self._find_configs(configs)
        settings_file = self.configs_dir / "flenwheel.yaml"
        self.settings = load_yaml_model(settings_file, Settings) if settings_file.exists() else Settings()
        chosen = root or os.environ.get("FLENWHEEL_HOME") or self.settings.root
        self.root = Path(chosen).expanduser().resolve()

    @staticmethod
    def _find_configs(configs: Path | str | None) -> Path:
        candidates = [configs, os.environ.get("FLENWHEEL_CONFIGS")]
        for c in candidates:
            if c:
                p = Path(c).expanduser().resolve()
                if not p.is_dir():
                    raise ConfigError(f"{p}: config folder not found")
                return p
        cwd = Path.cwd() / "configs"
        return cwd.resolve() if cwd.is_dir() else default_configs()

    # --- paths inside the data root
    @property
    def objects_dir(self) -> Path:
        return self.root / "objects"

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.duckdb"

    def catalog(self) -> Catalog:
        """The data root's catalog (cheap: the file is opened per read or write)."""
        return Catalog(self.catalog_path, lock_timeout_s=self.settings.catalog.lock_timeout_s)

    def inbox_dir(self, character: str) -> Path:
        return self.root / "inbox" / validate_character_name(character)

    # --- config files
    def character(self, name: str, profile: str | None = None) -> Character:
        """configs/characters/<name>.yaml; an identity backend it leaves open is the profile's (``profile``, else
        the default profile's)."""
        validate_character_name(name)
        path = self.configs_dir / "characters" / f"{name}.yaml"
        if not path.exists():
            raise ConfigError(
                f"unknown character {name!r}: create {path} with at least 'name: {name}' and "
                f"'trigger: <word>' (see configs/characters/ for examples)"
            )
        character = load_yaml_model(path, Character)
        if character.name != name:
            raise ConfigError(f"{path}: key 'name': must equal the file name ({name!r}), got {character.name!r}")
        if character.identity.backend is None:
            backend = self.profile(profile).identity_backend
            character = character.model_copy(
                update={"identity": character.identity.model_copy(update={"backend": backend})}
            )
        return character

    def character_names(self) -> list[str]:
        folder = self.configs_dir / "characters"
        return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []

    def source_dir(self, character: Character) -> Path:
        if character.source_dir is None:
            return self.inbox_dir(character.name)
        p = character.source_dir.expanduser()
        return p if p.is_absolute() else (self.configs_dir.parent / p).resolve()

    def loras(self) -> dict[str, LoraSpec]:
        """configs/loras.yaml: the LoRA library, by name."""
        path = self.configs_dir / "loras.yaml"
        if not path.exists():
            return {}
        library = load_yaml_model(path, LoraLibrary)
        return library.loras

    def prompt_library(self, character: Character | None = None, kind: str = "enrich") -> dict[str, PromptEntry]:
        """configs/prompts/<kind>.yaml by id, with the character's own prompts added (enrich and evaluation; the
        character chooses its evaluation library, see :meth:`evaluation_set`)."""
        if kind == "evaluation":
            return self.evaluation_set(character)[0]
        path = self.configs_dir / "prompts" / f"{kind}.yaml"
        library = load_yaml_model(path, PromptLibrary)
        entries = {p.id: p for p in library.prompts}
        if character is not None and kind == "enrich":
            entries.update({p.id: p for p in character.prompts})
        self._check_categories(path, entries, ENRICH_CATEGORIES if kind == "enrich" else SYNTHETIC_CATEGORIES)
        return entries

    def evaluation_set(self, character: Character | None = None) -> tuple[dict[str, PromptEntry], list[int]]:
        """The evaluation prompts by id and their fixed seeds (docs/evaluation.md): the library the character names
        (configs/prompts/evaluation.yaml by default), its own evaluation prompts added, its seeds if it sets any."""
        own = character.evaluation if character is not None else None
        path = self.configs_dir / "prompts" / f"{own.library if own else 'evaluation'}.yaml"
        library = load_yaml_model(path, EvaluationLibrary)
        entries = {p.id: p for p in library.prompts}
        if own is not None:
            entries.update({p.id: p for p in own.prompts})
        self._check_categories(path, entries, EVALUATION_CATEGORIES)
        return entries, list(own.seeds if own is not None and own.seeds else library.seeds)

    @staticmethod
    def _check_categories(path: Path, entries: dict[str, PromptEntry], allowed: tuple[str, ...]) -> None:
        for i, p in enumerate(entries.values()):
            if p.category not in allowed:
                raise ConfigError(
                    f"{path}: key 'prompts.{i}.category': {p.category!r} is not one of {', '.join(allowed)}"
                )

    def profile_names(self) -> list[str]:
        folder = self.configs_dir / "profiles"
        return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []

    def profile(self, name: str | None = None) -> Profile:
        name = name or self.settings.default_profile
        if name not in self.profile_names():
            raise ConfigError(
                f"unknown profile {name!r}: configs/profiles has {', '.join(self.profile_names()) or 'none'}"
            )
        path = self.configs_dir / "profiles" / f"{name}.yaml"
        profile = load_yaml_model(path, Profile)
        if profile.name != name:
            raise ConfigError(f"{path}: key 'name': must equal the file name ({name!r}), got {profile.name!r}")
        library = self.loras()
        for stage, settings in profile.stages().items():
            kind = profile.family_of(stage)
            for category, stack in settings.loras.items():
                for i, use in enumerate(stack):
                    key = f"{stage}.loras.{category}.{i}.name"
                    if use.name not in library:
                        raise ConfigError(
                            f"{path}: key '{key}': unknown LoRA {use.name!r}; configs/loras.yaml has "
                            f"{', '.join(library) or 'none'}"
                        )
                    if library[use.name].applies_to != kind:
                        raise ConfigError(
                            f"{path}: key '{key}': LoRA {use.name!r} is for {library[use.name].applies_to}, "
                            f"not the {stage} ({kind})"
                        )
                    base, model = library[use.name].base, settings.model.partition("@")[0]
                    if base and re.match(HUB_ID_PATTERN, model) and not Path(model).exists() and base != model:
                        # a 2509 LoRA on the 2511 editor loads (same shapes) but was not trained for it
                        raise ConfigError(
                            f"{path}: key '{key}': LoRA {use.name!r} was made for {base}, and the {stage} runs "
                            f"{model}: pick the LoRA made for it (configs/loras.yaml)"
                        )
        return profile


@lru_cache(maxsize=8)
def workspace_for(root: str, configs: str) -> Workspace:
    """The process's Workspace for a data root and config folder (one per pair: parsed configs are cached by it)."""
    return Workspace(root=root, configs=configs)


@dataclass(frozen=True)
class RunContext:
    """What the tasks of one flow run share, built once by the flow: the data root, the config folder, the
    character, the profile and the run id. Plain values, so the context travels to a task in another process as it
    is, and the task opens its workspace through the process's cache instead of rebuilding it from strings."""

    root: str
    configs: str
    character: str
    profile: str | None
    run_id: str

    @classmethod
    def of(cls, ws: Workspace, character: str, profile: str | None, run_id: str) -> RunContext:
        return cls(str(ws.root), str(ws.configs_dir), character, profile, run_id)

    @property
    def ws(self) -> Workspace:
        return workspace_for(self.root, self.configs)

    def catalog(self) -> Catalog:
        return self.ws.catalog()

    def character_config(self) -> Character:
        return self.ws.character(self.character, self.profile)

    def for_character(self, character: str) -> RunContext:
        """The same run, for another character (the nightly run goes through them all)."""
        return replace(self, character=character)
