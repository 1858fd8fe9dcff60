"""Releases of the agent on a gateway: fetching and checking one, installing it into a venv
of its own, switching the ``current`` symlink, and restarting the agent (systemd, or a pid
file). The update's flow and its result: :mod:`edge_agent._update`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final, Protocol

from edge_agent._errors import EdgeError

__all__ = [
    "LOCK_NAME",
    "PROJECT",
    "SHA256_RE",
    "PidfileRestarter",
    "Restarter",
    "SystemdRestarter",
    "UpdateError",
    "compare_versions",
    "fetch",
    "install_release",
    "release_dir",
    "release_lock",
    "run_tool",
    "source_version",
    "spool_schema",
    "switch_current",
    "version_refusal",
]

log: Final = logging.getLogger("edge_agent")
LOCK_NAME: Final = "smartcity-lock.txt"
PROJECT: Final = "smartcity-telemetry"
MAX_DOWNLOAD: Final = 512 * 1024 * 1024
SHA256_RE: Final = re.compile(r"[0-9a-f]{64}")
_WHEEL = re.compile(r"smartcity_telemetry-([0-9][A-Za-z0-9.+!_]*)-[^/]*\.whl")
_PINNED = re.compile(r"^smartcity[-_]telemetry==([0-9][A-Za-z0-9.+!]*)", re.MULTILINE | re.I)
#: The PEP 440 versions the project publishes: release, pre, post, dev, local (no epoch).
_VERSION = re.compile(
    r"(?P<release>[0-9]+(?:\.[0-9]+)*)"
    r"(?:(?P<pre>a|b|rc)(?P<pre_n>[0-9]+))?"
    r"(?:\.post(?P<post>[0-9]+))?"
    r"(?:\.dev(?P<dev>[0-9]+))?"
    r"(?:\+(?P<local>[a-z0-9]+(?:\.[a-z0-9]+)*))?",
    re.IGNORECASE,
)
_PRE_RANK: Final = {"a": 0, "b": 1, "rc": 2}


class UpdateError(EdgeError):
    """An update that cannot go on (bad source, checksum, install, new release refused)."""


# -- versions ------------------------------------------------------------------------------------
_VersionKey = tuple[
    tuple[int, ...], tuple[int, int, int], int, tuple[int, int], tuple[tuple[int, int | str], ...]
]


def _version_key(version: str) -> _VersionKey:
    """PEP 440 order of the forms ``_VERSION`` accepts: ``1.0.dev1 < 1.0a1 < 1.0rc1 < 1.0 <
    1.0+local < 1.0.post1``; ``1.0 == 1.0.0``. :class:`UpdateError` for any other form."""
    m = _VERSION.fullmatch(version)
    if m is None:
        raise UpdateError(f"version {version!r} is not one this updater can order (PEP 440)")
    release = tuple(int(p) for p in m["release"].split("."))
    while len(release) > 1 and release[-1] == 0:
        release = release[:-1]
    post = int(m["post"]) if m["post"] is not None else -1
    dev = (0, int(m["dev"])) if m["dev"] is not None else (1, 0)
    if m["pre"] is not None:
        pre = (0, _PRE_RANK[m["pre"].lower()], int(m["pre_n"]))
    elif m["dev"] is not None and post < 0:
        pre = (-1, 0, 0)  # 1.0.dev1 comes before 1.0a1
    else:
        pre = (1, 0, 0)
    local = tuple(
        (1, int(part)) if part.isdigit() else (0, part.lower())
        for part in (m["local"] or "").split(".")
        if part
    )
    return release, pre, post, dev, local


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as release version ``a`` is older than, the same as or newer than ``b``."""
    ka, kb = _version_key(a), _version_key(b)
    return (ka > kb) - (ka < kb)


def version_refusal(
    version: str,
    running: str,
    *,
    allow_downgrade: bool,
    reinstall: bool,
    signed: bool,
    signed_version: str | None,
) -> str | None:
    """Why release ``version`` may not replace ``running``, or ``None``: it may. Newer: yes.
    The same version: only a ``reinstall``; older: only with ``allow_downgrade``; either,
    when releases are signed (``signed``), only with a signature covering the version
    (``signed_version``; ``None``: a legacy signature)."""
    try:
        order = compare_versions(version, running)
    except UpdateError as exc:
        return f"cannot order {version} against the running {running}: {exc}"
    if order > 0:
        return None
    if order == 0:
        if not reinstall:
            return (
                f"{version} is the running version: not installed again unless the order "
                "asks for a reinstall (reinstall / --reinstall)"
            )
        what = "a reinstall"
    else:
        if not allow_downgrade:
            return (
                f"{version} is older than the running {running}: downgrade refused (a "
                "deliberate rollback says allow_downgrade / --allow-downgrade)"
            )
        what = f"a rollback from {running}"
    if signed and signed_version is None:
        return (
            f"{what} to {version} needs a signature that covers the version, and this one is "
            "a legacy signature (name and sha256 only): sign the release again with "
            "`smartcity edge release sign`"
        )
    return None


# -- restarting the agent -----------------------------------------------------------------------
class Restarter(Protocol):
    def restart(self) -> None: ...

    def exited(self) -> int | None:
        """The new agent's exit code if it is known to have exited."""


class SystemdRestarter:
    """``systemctl restart <unit>`` (the agent runs under systemd)."""

    def __init__(self, unit: str) -> None:
        self.unit = unit

    def restart(self) -> None:
        res = subprocess.run(
            ["systemctl", "restart", self.unit], capture_output=True, text=True, timeout=120
        )
        if res.returncode != 0:
            log.warning("systemctl restart failed", extra={"unit": self.unit, "err": res.stderr})

    def exited(self) -> int | None:
        return None  # systemd restarts a crashing agent: only the deadline decides


class PidfileRestarter:
    """Without systemd (containers, tests): stop the pid in ``pidfile`` (SIGTERM, SIGKILL
    after ``stop_timeout_s``), start ``command`` detached, write its pid."""

    def __init__(
        self, pidfile: Path, command: list[str], log_path: Path, stop_timeout_s: float = 30
    ) -> None:
        self.pidfile, self.command, self.log_path = pidfile, command, log_path
        self.stop_timeout_s = stop_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    def restart(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            _stop_pid(int(self.pidfile.read_text().strip()), self.stop_timeout_s)
        if self._proc is not None and self._proc.poll() is None:
            _stop_pid(self._proc.pid, self.stop_timeout_s)
        with self.log_path.open("ab") as out:
            self._proc = subprocess.Popen(
                self.command,
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd="/",
            )
        self.pidfile.write_text(f"{self._proc.pid}\n")

    def exited(self) -> int | None:
        return None if self._proc is None else self._proc.poll()


def _stop_pid(pid: int, timeout_s: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return  # gone
        if state == "Z":
            return  # exited, not reaped by its parent yet
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# -- installing a release -----------------------------------------------------------------------
def fetch(source: str, downloads: Path, sha256: str | None) -> tuple[Path, str]:
    """A local copy of ``source`` (path or http(s) URL) and its sha256, checked if given."""
    if source.startswith(("https://", "http://")):
        import urllib.parse  # here: the agent imports this module for read_result only
        import urllib.request

        if sha256 is None:
            raise UpdateError("a URL source needs --sha256")
        name = Path(urllib.parse.urlparse(source).path).name or "download"
        downloads.mkdir(parents=True, exist_ok=True)
        path = downloads / name
        tmp = downloads / f".{name}.part"
        try:
            # S310: the scheme is http(s), checked above
            with urllib.request.urlopen(source, timeout=60) as resp, tmp.open("wb") as out:  # noqa: S310
                got = 0
                while chunk := resp.read(1 << 16):
                    got += len(chunk)
                    if got > MAX_DOWNLOAD:
                        raise UpdateError(f"{source}: larger than {MAX_DOWNLOAD} bytes")
                    out.write(chunk)
        except OSError as exc:
            raise UpdateError(f"cannot download {source}: {exc}") from exc
        os.replace(tmp, path)
    else:
        path = Path(source).absolute()
        if not path.is_file():
            raise UpdateError(f"{source}: no such file")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    got_sha = digest.hexdigest()
    if sha256 is not None and got_sha != sha256.lower():
        raise UpdateError(f"{path.name}: sha256 {got_sha} is not the expected {sha256.lower()}")
    return path, got_sha


def source_version(path: Path) -> str:
    """The release's version: from a wheel's name, or the pin in a requirements file."""
    if path.suffix == ".whl":
        m = _WHEEL.fullmatch(path.name)
        if m is None:
            raise UpdateError(f"{path.name}: not a {PROJECT} wheel")
        return m.group(1)
    m = _PINNED.search(path.read_text(encoding="utf-8", errors="replace"))
    if m is None:
        raise UpdateError(f"{path.name}: a requirements file must pin {PROJECT}==VERSION")
    return m.group(1)


def run_tool(cmd: list[str], what: str, timeout: float = 900) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UpdateError(f"{what}: {exc}") from exc
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip()[-1500:]
        raise UpdateError(f"{what} failed (exit {res.returncode}): {tail}")
    return res.stdout


def release_dir(root: Path, version: str, sha256: str) -> Path:
    """Where a release is installed: ``releases/<version>-<sha256[:12]>``."""
    return root / "releases" / f"{version}-{sha256[:12]}"


def install_release(
    root: Path,
    source: Path,
    sha256: str,
    *,
    lock: Path | None,
    installer: str = "pip",
    into: Path | None = None,
) -> tuple[Path, str]:
    """A fresh venv ``into`` (default :func:`release_dir`) holding ``source`` (a wheel, with
    its dependencies from ``lock``, or a locked requirements file); returns (dir, version)."""
    version = source_version(source)
    release = into if into is not None else release_dir(root, version, sha256)
    if release.exists():
        shutil.rmtree(release)  # a leftover of an earlier attempt (never current: checked)
    release.parent.mkdir(parents=True, exist_ok=True)
    use_uv = installer != "pip"
    venv = [sys.executable, "-m", "venv", *(["--without-pip"] if use_uv else []), str(release)]
    try:
        run_tool(venv, "creating the venv", timeout=300)
        py = str(release / "bin" / "python")
        pip = (
            [installer, "pip", "install", "--python", py]
            if use_uv
            else [py, "-m", "pip", "install"]
        )
        if source.suffix == ".whl":
            if lock is None:
                raise UpdateError(
                    "no lock for the wheel's dependencies: give --requirements"
                    " (requirements/gateway.txt of the release)"
                )
            run_tool(
                [*pip, "-q", "--require-hashes", "--no-deps", "-r", str(lock)],
                "installing the lock",
            )
            run_tool([*pip, "-q", "--no-deps", str(source)], "installing the wheel")
            shutil.copyfile(lock, release / LOCK_NAME)
        else:
            run_tool([*pip, "-q", "--require-hashes", "--no-deps", "-r", str(source)], "installing")
            shutil.copyfile(source, release / LOCK_NAME)
        got = run_tool(
            [py, "-c", f"import importlib.metadata as m; print(m.version({PROJECT!r}))"],
            "reading the installed version",
        ).strip()
        if got != version:
            raise UpdateError(f"installed version {got}, expected {version}")
    except BaseException:
        shutil.rmtree(release, ignore_errors=True)
        raise
    return release, version


def switch_current(root: Path, current: Path, previous: Path | None) -> None:
    """Point ``current`` (and ``previous``) at releases, each by an atomic rename."""
    for name, target in (("previous", previous), ("current", current)):
        link = root / name
        if target is None:
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            continue
        tmp = root / f".{name}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(target.relative_to(root))
        os.replace(tmp, link)


def spool_schema(path: Path) -> tuple[int, int] | None:
    """(schema, compat) of a spool file, read-only, without opening it as a spool."""
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            schema = int(db.execute("PRAGMA user_version").fetchone()[0])
            row = db.execute("SELECT value FROM meta WHERE key = 'compat_version'").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return schema, (schema if row is None else int(row[0]))


@contextlib.contextmanager
def release_lock(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".update.lock").open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UpdateError(f"another update is running in {root}") from None
        yield
