"""Config files: bad keys and values exit non-zero with one message naming the file, key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from flenwheel.core.config import ConfigError, validate_character_name
from flenwheel.store.workspace import Workspace


def test_repo_configs_all_load(ws: Workspace) -> None:
    for name in ("cpu-tiny", "gpu-24gb", "gpu-80gb"):
        assert ws.profile(name).name == name
    for name in ws.character_names():
        assert ws.character(name).name == name


def test_unknown_key_names_file_key_and_allowed(ws: Workspace) -> None:
    path = ws.configs_dir / "characters" / "obama.yaml"
    path.write_text("name: obama\ntrigger: fw_obama\ntreshold: 0.5\n")
    with pytest.raises(ConfigError) as info:
        ws.character("obama")
    msg = str(info.value)
    assert str(path) in msg and "unknown key 'treshold'" in msg and "allowed keys: name, trigger" in msg


def test_bad_value_names_nested_key_and_choices(ws: Workspace) -> None:
    path = ws.configs_dir / "characters" / "obama.yaml"
    path.write_text("name: obama\ntrigger: fw_obama\nidentity:\n  backend: arcface\n")
    with pytest.raises(ConfigError) as info:
        ws.character("obama")
    msg = str(info.value)
    assert "identity.backend" in msg and "'dlib', 'insightface', 'yunet' or 'sface'" in msg and "arcface" in msg


def test_yaml_syntax_error_and_non_mapping(ws: Workspace) -> None:
    path = ws.configs_dir / "characters" / "obama.yaml"
    path.write_text("name: obama\n  trigger: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        ws.character("obama")
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        ws.character("obama")


def test_settings_file_errors_and_root_override(tmp_path: Path, configs_dir: Path, monkeypatch) -> None:
    (configs_dir / "flenwheel.yaml").write_text("store:\n  max_side: 10\n")
    with pytest.raises(ConfigError, match=r"key 'store.max_side'.*greater than or equal to 256"):
        Workspace(configs=configs_dir)
    (configs_dir / "flenwheel.yaml").write_text("root: somewhere\n")
    monkeypatch.setenv("FLENWHEEL_HOME", str(tmp_path / "env-root"))
    assert Workspace(configs=configs_dir).root == tmp_path / "env-root"
    assert Workspace(root=tmp_path / "flag", configs=configs_dir).root == tmp_path / "flag"
    monkeypatch.delenv("FLENWHEEL_HOME")
    monkeypatch.chdir(tmp_path)
    assert Workspace(configs=configs_dir).root == tmp_path / "somewhere"


def test_unknown_profile_and_character(ws: Workspace) -> None:
    with pytest.raises(
        ConfigError, match="configs/profiles has cpu-tiny, cpu-tiny-open, gpu-24gb, gpu-24gb-open, gpu-80gb"
    ):
        ws.profile("gpu-8gb")
    with pytest.raises(ConfigError, match="unknown character 'nobody': create"):
        ws.character("nobody")


@pytest.mark.parametrize("name", ["../etc", "a/b", "o'brien", 'x"y', "x; DROP TABLE images", "", "-lead", "a" * 65])
def test_character_names_are_restricted(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid character name"):
        validate_character_name(name)


def test_cli_reports_config_error_in_one_line(cli, ws: Workspace, write_file) -> None:
    (ws.configs_dir / "characters" / "obama.yaml").write_text("name: obama\ntrigger: fw obama\n")
    result = cli("ingest", "obama", str(write_file("x.png", b"")))
    assert result.exit_code == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "key 'trigger'" in lines[0]


def test_a_new_profile_file_needs_no_code_change(ws: Workspace) -> None:
    """Profiles are discovered from configs/profiles: a copy under a new name is usable as it is."""
    source = (ws.configs_dir / "profiles" / "gpu-24gb.yaml").read_text()
    (ws.configs_dir / "profiles" / "gpu-48gb.yaml").write_text(source.replace("name: gpu-24gb", "name: gpu-48gb"))
    assert "gpu-48gb" in ws.profile_names()
    assert ws.profile("gpu-48gb").name == "gpu-48gb"


def test_wheel_defaults_and_starter_configs(tmp_path: Path) -> None:
    """The shipped defaults are found without a configs/ folder, and `init` writes an editable copy."""
    from flenwheel.store.workspace import default_configs, write_starter_configs

    assert (default_configs() / "profiles" / "cpu-tiny.yaml").is_file()
    written = write_starter_configs(tmp_path / "configs")
    names = {p.relative_to(tmp_path / "configs").as_posix() for p in written}
    assert {"flenwheel.yaml", "loras.yaml", "profiles/cpu-tiny.yaml", "prompts/enrich.yaml"} <= names
    assert "__init__.py" not in names
    assert Workspace(root=tmp_path / "data", configs=tmp_path / "configs").profile("cpu-tiny").name == "cpu-tiny"
    with pytest.raises(ConfigError, match="already exists"):
        write_starter_configs(tmp_path / "configs")
