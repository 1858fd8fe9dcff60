"""Settings files: the one YAML source under the services' pydantic-settings models.

Server side only (``ingest``, ``api``): it needs ``pydantic-settings``, which the gateway
install does not carry, so :mod:`foundation` does not import it.

- :class:`YamlSettings`: a settings model read from flags, the environment, the YAML file
  and the defaults, in that order (or :class:`YamlFileSource` in a model's own sources);
- :func:`build_settings`: the file (optionally the one section named after the service)
  and the flags into the model;
- :class:`SettingsError`: what is wrong, naming the file, every key and the reason.
"""

from __future__ import annotations

from foundation.settings._yaml import (
    SettingsError,
    YamlFileSource,
    YamlSettings,
    build_settings,
    read_settings_file,
)

__all__ = [
    "SettingsError",
    "YamlFileSource",
    "YamlSettings",
    "build_settings",
    "read_settings_file",
]
