"""The YAML settings file as a pydantic-settings source.

A settings class derives from :class:`YamlSettings` (or lists :class:`YamlFileSource` in its
own ``settings_customise_sources``); :func:`build_settings` reads the file and builds the
class. The file's data travels in a context variable because pydantic-settings builds its
sources inside the model's ``__init__``, where no argument reaches them; a context variable
keeps two loads in two threads or tasks apart.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

_S = TypeVar("_S", bound=BaseSettings)
_Source = PydanticBaseSettingsSource

_file_data: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "foundation_settings_file_data", default=None
)


class SettingsError(ValueError):
    """Settings that cannot be used: ``source`` (the file, or ``configuration`` without
    one) and ``reason``; ``str()`` is ``"<source>: <reason>"``."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


def read_settings_file(path: Path, *, section: str | None = None) -> dict[str, Any]:
    """The file's top-level mapping (empty for an empty file). With ``section``, a file
    whose only key is ``section`` stands for that section's mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(str(path), f"cannot read: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsError(str(path), f"not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(str(path), "top level must be a mapping")
    if section is not None and set(data) == {section}:
        data = data[section]
        if not isinstance(data, dict):
            raise SettingsError(str(path), f"{section!r} must be a mapping")
    return data


class YamlFileSource(PydanticBaseSettingsSource):
    """The file :func:`build_settings` read (nothing outside it)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return (_file_data.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_file_data.get() or {})


class YamlSettings(BaseSettings):
    """Settings from, highest priority first: keyword arguments (flags), the environment,
    the YAML file given to :func:`build_settings`, the defaults."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return cls.ordered_sources(init_settings, env_settings, YamlFileSource(settings_cls))

    @classmethod
    def ordered_sources(cls, flags: _Source, env: _Source, file: _Source) -> tuple[_Source, ...]:
        """The sources, highest priority first; a model may wrap them or add its own."""
        return flags, env, file


@contextlib.contextmanager
def _settings_file(data: Mapping[str, Any]) -> Iterator[None]:
    token = _file_data.set(data)
    try:
        yield
    finally:
        _file_data.reset(token)


def build_settings(
    cls: type[_S],
    path: Path | None,
    values: Mapping[str, Any],
    *,
    section: str | None = None,
) -> _S:
    """``cls(**values)`` over the YAML file at ``path`` (optional; ``section`` as in
    :func:`read_settings_file`). Raises :class:`SettingsError` naming the file and every
    key refused (``dotted.key: reason; ...``); another :class:`ValueError` a source raises
    passes unchanged."""
    source = str(path) if path is not None else "configuration"
    data = {} if path is None else read_settings_file(path, section=section)
    try:
        with _settings_file(data):
            return cls(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SettingsError(source, problems) from exc
