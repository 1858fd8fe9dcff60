"""References in config values: ``${VAR}`` (an environment variable) and ``${file:PATH}``
(a file's contents), expanded in the config *file* only.

::

    broker:
      host: ${MQTT_HOST}                     the variable's value (unset: a config error)
      port: ${MQTT_PORT}                     "8883", then validated as an int like any value
      password: ${file:/run/secrets/mqtt}    the file's text, trailing newline(s) removed
      username: cabinet-$${GW}               $${ is a literal ${ (here: cabinet-${GW})

Only string values are expanded (keys never), once (a value read from a variable or a file is
not expanded again), after YAML parsing and before validation: every reference that cannot be
resolved is a :class:`ConfigIssue` naming the key, so ``edge check`` and ``edge run`` report
all of them and exit 78. A relative ``file:`` path is relative to the config file's folder.
Remote configs (``config/desired``) are never expanded: a message from the platform may not
read the gateway's environment or files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from edge_agent._errors import ConfigIssue

__all__ = ["MAX_FILE_BYTES", "expand_references"]

#: A ``${file:...}`` reference holds a secret or a short value, never a large file.
MAX_FILE_BYTES: Final = 64 * 1024
_REF: Final = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_VAR: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def expand_references(
    data: Any, *, base_dir: Path, env: Mapping[str, str] | None = None
) -> tuple[Any, list[ConfigIssue]]:
    """A copy of ``data`` with references expanded, and the issues of those that failed."""
    environ = os.environ if env is None else env
    issues: list[ConfigIssue] = []

    def value(text: str, where: str) -> str:
        def one(m: re.Match[str]) -> str:
            if m.group(0) == "$${":
                return "${"
            ref = m.group(1).strip()
            if ref.startswith("file:"):
                return _read(ref.removeprefix("file:").strip(), base_dir, where, issues)
            if not _VAR.fullmatch(ref):
                issues.append(
                    ConfigIssue(
                        where,
                        f"bad reference ${{{ref}}}: use ${{VARIABLE}} or ${{file:/path}} "
                        "($${ for a literal ${)",
                    )
                )
                return ""
            found = environ.get(ref)
            if found is None:
                issues.append(ConfigIssue(where, f"environment variable {ref} is not set"))
                return ""
            return found

        return _REF.sub(one, text) if "${" in text else text

    def walk(node: Any, where: str) -> Any:
        if isinstance(node, str):
            return value(node, where)
        if isinstance(node, dict):
            return {k: walk(v, f"{where}.{k}" if where else str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(node)]
        return node

    return walk(data, ""), issues


def _read(ref: str, base_dir: Path, where: str, issues: list[ConfigIssue]) -> str:
    if not ref:
        issues.append(ConfigIssue(where, "empty ${file:} reference"))
        return ""
    path = Path(ref).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        issues.append(ConfigIssue(where, f"cannot read {path}: {exc.strerror or exc}"))
        return ""
    if len(raw) > MAX_FILE_BYTES:
        issues.append(ConfigIssue(where, f"{path} is larger than {MAX_FILE_BYTES} bytes"))
        return ""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        issues.append(ConfigIssue(where, f"{path} is not UTF-8 text"))
        return ""
    return text.rstrip("\r\n")
