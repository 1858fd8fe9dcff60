"""The one YAML settings source (``foundation.settings``) under ingest's and the API's
settings: what it reads, in which order, and the errors that name the file and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import SettingsConfigDict

from foundation.settings import SettingsError, YamlSettings, build_settings, read_settings_file


class _Settings(YamlSettings):
    model_config = SettingsConfigDict(env_prefix="TEST_FOUNDATION_", extra="forbid")

    port: int = 1
    name: str = "x"


def test_the_file_sits_below_the_environment_and_the_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("svc:\n  port: 2\n  name: file\n")
    assert read_settings_file(path, section="svc") == {"port": 2, "name": "file"}
    assert build_settings(_Settings, path, {}, section="svc").port == 2
    monkeypatch.setenv("TEST_FOUNDATION_PORT", "3")
    assert build_settings(_Settings, path, {}, section="svc").port == 3
    assert build_settings(_Settings, path, {"port": 4}, section="svc").port == 4
    assert _Settings().name == "x"  # outside build_settings the file is gone


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("port: [1\n", "not valid YAML"),
        ("- 1\n- 2\n", "top level must be a mapping"),
        ("svc: 3\n", "'svc' must be a mapping"),
    ],
)
def test_a_bad_file_is_named_with_the_reason(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=reason) as caught:
        build_settings(_Settings, path, {}, section="svc")
    assert str(caught.value).startswith(f"{path}: ")
    assert caught.value.source == str(path)


def test_a_missing_file_and_an_empty_one(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        read_settings_file(tmp_path / "missing.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert read_settings_file(tmp_path / "empty.yaml") == {}


def test_every_refused_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("port: many\ncolour: red\n")
    with pytest.raises(SettingsError) as caught:
        build_settings(_Settings, path, {})
    assert caught.value.source == str(path)
    assert "port: " in caught.value.reason
    assert "colour: Extra inputs are not permitted" in caught.value.reason
    with pytest.raises(SettingsError, match=r"^configuration: port: "):
        build_settings(_Settings, None, {"port": "many"})
