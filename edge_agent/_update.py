"""Agent updates: ``smartcity edge update`` and the agent's ``update`` command.

Install layout (docs/gateway-install.md, "Updates and rollback")::

    /opt/smartcity-edge/
    ├── releases/0.1.0-3f2a9c1b7d4e/   one venv per release (<version>-<sha256[:12]>), with
    │                                   smartcity-lock.txt: the lock it was installed from
    ├── current  -> releases/...       the unit runs current/bin/smartcity edge run
    ├── previous -> releases/...       what a rollback goes back to
    └── downloads/                     wheels / requirements fetched from URLs

    fetch + sha256 + signature ─▶ venv next to current ─▶ lock + release ─▶ `edge check` ─▶
    switch current (symlink + rename) ─▶ restart ─▶ /status: new version, new process,
    uplink up (birth sent on connect) within the deadline ─┬─ yes: ok, older releases pruned
                                                           └─ no: current back, restart the old
                                                              one, wait for it: rolled_back

The result (version, status, reason, time) is written to ``<state_dir>/last-update.json``;
the agent reads it (mtime-cached) into its health message and ``/status``. The ``update``
command (API, engineer role) only writes ``<state_dir>/update-request.json``: the agent runs
unprivileged, so a root-side service (``smartcity edge update --request FILE``, started by a
systemd path unit) carries it out and accepts only URLs under its ``--allow-url-prefix``.
With ``update.trusted_keys`` in the config, the release's ``.sig`` must verify with one of
them (:mod:`edge_agent._signing`) before anything is installed; otherwise the result is
``failed`` with the reason and the running release is not touched.

Versions only go up (:func:`version_refusal`): a release older than the running one is
refused (``failed``) unless the order says ``allow_downgrade``, one of the same version
unless it says ``reinstall``; with ``update.trusted_keys`` either needs a signature that
covers the version (a legacy ``.sig`` is refused for them). So a replayed or forged order
for an old signed release installs nothing.
Hierarchy: ``EdgeError`` > ``UpdateError`` (anything that stops an update before a switch).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final, Literal

from edge_agent._errors import CommandError, EdgeError
from edge_agent._releases import (
    LOCK_NAME,
    PROJECT,
    SHA256_RE,
    PidfileRestarter,
    Restarter,
    SystemdRestarter,
    UpdateError,
    fetch,
    install_release,
    release_dir,
    release_lock,
    run_tool,
    source_version,
    spool_schema,
    switch_current,
    version_refusal,
)

__all__ = [
    "REQUEST_NAME",
    "RESULT_NAME",
    "PidfileRestarter",
    "SystemdRestarter",
    "UpdateError",
    "UpdateOptions",
    "UpdateRequest",
    "UpdateResult",
    "fetch",
    "install_release",
    "order_update",
    "read_request",
    "read_result",
    "run_update",
    "version_refusal",
]

log: Final = logging.getLogger("edge_agent")
Status = Literal["pending", "ok", "failed", "rolled_back", "rollback_failed"]
RESULT_NAME: Final = "last-update.json"
REQUEST_NAME: Final = "update-request.json"


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """The last update, as kept in ``<state_dir>/last-update.json``."""

    version: str
    status: Status
    ts: float
    previous_version: str | None = None
    reason: str | None = None
    source: str | None = None
    sha256: str | None = None


def write_result(state_dir: Path, result: UpdateResult) -> None:
    _write_json(state_dir / RESULT_NAME, asdict(result), mode=0o644)


_cache: dict[Path, tuple[tuple[int, int], UpdateResult | None]] = {}


def read_result(state_dir: Path) -> UpdateResult | None:
    """The last update result, or None (none yet, unreadable); cached by mtime and size."""
    path = state_dir / RESULT_NAME
    try:
        st = path.stat()
    except OSError:
        return None
    key = (st.st_mtime_ns, st.st_size)
    hit = _cache.get(path)
    if hit is not None and hit[0] == key:
        return hit[1]
    result: UpdateResult | None = None
    with contextlib.suppress(OSError, ValueError, TypeError):
        if st.st_size <= 64 * 1024:
            data = json.loads(path.read_text(encoding="utf-8"))
            result = UpdateResult(**{k: data.get(k) for k in UpdateResult.__slots__})
    _cache[path] = (key, result)
    return result


def _write_json(path: Path, data: dict[str, Any], *, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


# -- the agent's side: the `update` command ----------------------------------------------------
_ARGS: Final = ("url", "sha256", "deadline", "allow_downgrade", "reinstall")


def order_update(state_dir: Path, args: dict[str, Any]) -> dict[str, Any]:
    """The ``update`` command: ``{"url": "https://...whl", "sha256": "<hex>", "deadline": 120,
    "allow_downgrade": false, "reinstall": false}``.

    Validates and writes ``update-request.json`` for the root-side updater; the agent itself
    installs nothing (it has no rights to, and must not: it may be the hostile party)."""
    unknown = set(args) - set(_ARGS)
    if unknown:
        raise CommandError(f"update: unknown argument(s) {sorted(unknown)} ({', '.join(_ARGS)})")
    url, sha, deadline = args.get("url"), args.get("sha256"), args.get("deadline", 120)
    flags = {k: args.get(k, False) for k in ("allow_downgrade", "reinstall")}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise CommandError(f"update: {key} must be true or false")
    if not isinstance(url, str) or len(url) > 2048 or not url.startswith(("https://", "http://")):
        raise CommandError("update: url must be an http(s) URL of at most 2048 characters")
    if not isinstance(sha, str) or not SHA256_RE.fullmatch(sha.lower()):
        raise CommandError("update: sha256 must be 64 hex digits")
    if isinstance(deadline, bool) or not isinstance(deadline, int | float):
        raise CommandError("update: deadline must be a number of seconds")
    if not 10 <= deadline <= 3600:
        raise CommandError("update: deadline must be between 10 and 3600 s")
    path = state_dir / REQUEST_NAME
    if path.exists():
        raise CommandError("update: another update request is waiting to be carried out")
    request = {
        "url": url,
        "sha256": sha.lower(),
        "deadline": float(deadline),
        **flags,
        "ts": time.time(),
    }
    try:
        _write_json(path, request, mode=0o640)
    except OSError as exc:
        raise CommandError(f"update: cannot write {path}: {exc.strerror or exc}") from exc
    log.info("update requested", extra={"url": url, "sha256": sha, "deadline": deadline, **flags})
    return {"accepted": True, "request": str(path)}


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateRequest:
    """An ``update-request.json`` as the root-side updater takes it (checked, untrusted)."""

    url: str
    sha256: str
    deadline_s: float
    allow_downgrade: bool = False
    reinstall: bool = False


def read_request(path: Path, allowed_prefixes: list[str]) -> UpdateRequest:
    """Take (read and delete) an update request; its content is untrusted."""
    try:
        raw = path.read_bytes()[: 16 * 1024]
        path.unlink()
        data = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise UpdateError(f"update request {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise UpdateError(f"update request {path}: not a JSON object")
    try:
        order_update_check = {k: data[k] for k in ("url", "sha256", "deadline")}
    except KeyError as exc:
        raise UpdateError(f"update request {path}: missing {exc}") from exc
    url, sha, deadline = order_update_check.values()
    if not isinstance(url, str) or not isinstance(sha, str) or not SHA256_RE.fullmatch(sha):
        raise UpdateError(f"update request {path}: bad url or sha256")
    if not isinstance(deadline, int | float) or not 10 <= deadline <= 3600:
        raise UpdateError(f"update request {path}: bad deadline")
    if not any(url.startswith(p) for p in allowed_prefixes):
        raise UpdateError(f"update request: {url} is not under an --allow-url-prefix")
    # absent in a request an older agent wrote: false
    allow_downgrade, reinstall = data.get("allow_downgrade", False), data.get("reinstall", False)
    if not isinstance(allow_downgrade, bool) or not isinstance(reinstall, bool):
        raise UpdateError(f"update request {path}: allow_downgrade and reinstall must be booleans")
    return UpdateRequest(
        url=url,
        sha256=sha,
        deadline_s=float(deadline),
        allow_downgrade=allow_downgrade,
        reinstall=reinstall,
    )


# -- the update ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateOptions:
    root: Path
    source: str
    sha256: str | None
    deadline_s: float
    state_dir: Path
    spool_path: Path
    lock: Path | None
    installer: str
    #: ``<release>/bin/smartcity edge check`` arguments for the new code (pre-switch).
    check_args: list[str]
    restarter: Restarter
    #: The agent's /status document (raises when it does not answer).
    status: Callable[[], dict[str, Any]]
    say: Callable[[str], None] = print
    #: ``update.trusted_keys``: set, the release must be signed with one of them.
    trusted_keys: tuple[str, ...] = ()
    #: The order allows an older release (a deliberate rollback; :func:`version_refusal`).
    allow_downgrade: bool = False
    #: The order allows the running version again (a repair).
    reinstall: bool = False


def run_update(opts: UpdateOptions) -> UpdateResult:
    """Install, switch, restart, wait; roll back on its own. Never raises for a failed update
    after the switch: the result says what happened (and is kept on disk)."""
    with release_lock(opts.root):
        return _update(opts)


def _update(opts: UpdateOptions) -> UpdateResult:
    t0 = time.monotonic()

    def say(line: str) -> None:
        opts.say(f"[{time.monotonic() - t0:5.1f}s] {line}")

    o = replace(opts, say=say)
    root = o.root.absolute()
    current_link = root / "current"
    if not current_link.is_symlink():
        raise UpdateError(f"{current_link} is not a symlink to a release (docs/gateway-install.md)")
    old = current_link.resolve()
    prev_link = root / "previous"
    old_previous = prev_link.resolve() if prev_link.is_symlink() else None
    old_version = run_tool(
        [
            str(old / "bin" / "python"),
            "-c",
            f"import importlib.metadata as m; print(m.version({PROJECT!r}))",
        ],
        "reading the running version",
    ).strip()
    src, sha = fetch(o.source, root / "downloads", o.sha256)
    version = source_version(src)

    def result(status: Status, reason: str | None = None) -> UpdateResult:
        r = UpdateResult(
            version=version,
            status=status,
            ts=time.time(),
            reason=reason,
            previous_version=old_version,
            source=o.source,
            sha256=sha,
        )
        write_result(o.state_dir, r)
        return r

    signed_version: str | None = None
    if o.trusted_keys:
        from edge_agent._signing import read_signature, verify_release

        try:
            signed = verify_release(src, sha, read_signature(o.source, src), o.trusted_keys)
        except UpdateError as exc:
            o.say(f"refused: {exc}")
            return result("failed", str(exc))
        signed_version = signed.version
        o.say(
            f"{src.name}: signature of {signed.signer} verified"
            + (f" (version {signed.version})" if signed.version else " (legacy: no version)")
        )
    refusal = version_refusal(
        version,
        old_version,
        allow_downgrade=o.allow_downgrade,
        reinstall=o.reinstall,
        signed=bool(o.trusted_keys),
        signed_version=signed_version,
    )
    if refusal is not None:
        o.say(f"refused: {refusal}")
        log.warning(
            "update refused", extra={"version": version, "running": old_version, "reason": refusal}
        )
        return result("failed", refusal)
    into = release_dir(root, version, sha)
    if into.resolve() == old:  # a reinstall of the running release's very bytes
        into = into.with_name(f"{into.name}.r{time.time_ns():x}")
    lock = o.lock or (old / LOCK_NAME if (old / LOCK_NAME).exists() else None)
    result("pending")
    o.say(f"installing {version} next to {old.name}")
    try:
        new, _ = install_release(root, src, sha, lock=lock, installer=o.installer, into=into)
        o.say(f"installed in {new}; checking the config with it")
        run_tool(
            [str(new / "bin" / "smartcity"), "edge", "check", *o.check_args],
            f"`edge check` of {version}",
            timeout=120,
        )
    except UpdateError as exc:
        return result("failed", str(exc))
    o.say(f"switching current to {new.name}, restarting the agent")
    switch_current(root, new, old)
    reason = _wait_healthy(o, version, time.monotonic())
    if reason is None:
        _prune(root, keep={new, old})
        o.say(f"{version} is up: uplink connected, birth sent")
        return result("ok")
    o.say(f"{version} did not come up ({reason}): rolling back to {old_version}")
    switch_current(root, old, old_previous)
    from edge_agent._spool import SCHEMA_VERSION

    schema = spool_schema(o.spool_path)
    if schema is not None and schema[1] > SCHEMA_VERSION:  # see _spool: refused, untouched
        reason += (
            f"; the spool now has schema {schema[0]} (compat {schema[1]}), which "
            f"{old_version} cannot use"
        )
    back = _wait_healthy(o, old_version, time.monotonic())
    if back is not None:
        return result(
            "rollback_failed", f"{reason}; {old_version} did not come back either: {back}"
        )
    shutil.rmtree(new, ignore_errors=True)
    o.say(f"rolled back: {old_version} is up again")
    return result("rolled_back", reason)


def _wait_healthy(o: UpdateOptions, version: str, started: float) -> str | None:
    """Restart, then wait for an agent of ``version`` started after ``started`` with its
    uplink up (the birth is the first publish of every connect). None, or why not."""
    o.restarter.restart()
    deadline = started + o.deadline_s
    why = "no answer yet"
    while time.monotonic() < deadline:
        code = o.restarter.exited()
        if code is not None:
            return f"the agent exited with code {code}"
        try:
            doc = o.status()
        except EdgeError as exc:
            why = f"no answer on its status endpoint ({exc})"
        else:
            up = doc.get("uplink") or {}
            if doc.get("version") != version:
                why = f"the agent answering is version {doc.get('version')}"
            elif float(doc.get("uptime_s") or 0) > time.monotonic() - started + 1:
                why = "the agent answering was not restarted"
            elif up.get("state") != "up":
                why = f"uplink {up.get('state')}: {up.get('last_error') or 'not connected yet'}"
            else:
                return None
        time.sleep(0.2)
    return f"not healthy within {o.deadline_s:g} s: {why}"


def _prune(root: Path, keep: set[Path]) -> None:
    for release in (root / "releases").iterdir():
        if release.resolve() not in keep:
            shutil.rmtree(release, ignore_errors=True)


def update_command(
    *,
    source: str | None,
    sha256: str | None,
    deadline_s: float,
    config: Path,
    root: Path,
    requirements: Path | None,
    installer: str,
    unit: str,
    pid_file: Path | None,
    request: Path | None,
    allow_url_prefix: list[str],
    say: Callable[[str], None],
    fetch_status: Callable[..., dict[str, Any]],
    allow_downgrade: bool = False,
    reinstall: bool = False,
) -> int:
    """``smartcity edge update``; returns the exit code: 0 updated, 1 not updated (nothing
    switched), 2 rolled back, 3 rollback failed, 78 config problem. ``fetch_status`` is
    :func:`edge_agent._status.fetch_status` (passed in: _status imports this module)."""
    from edge_agent._config import load_config
    from edge_agent._errors import ConfigError

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        say(str(exc))
        return 78
    try:
        if request is not None:
            if source is not None:
                raise UpdateError("give SOURCE or --request, not both")
            if allow_downgrade or reinstall:
                raise UpdateError(
                    "--allow-downgrade and --reinstall go with SOURCE; a --request says "
                    "its own (allow_downgrade, reinstall)"
                )
            req = read_request(request, allow_url_prefix)
            source, sha256, deadline_s = req.url, req.sha256, req.deadline_s
            allow_downgrade, reinstall = req.allow_downgrade, req.reinstall
        elif source is None:
            raise UpdateError("give SOURCE (a wheel or a locked requirements file) or --request")
        smartcity = str(root.absolute() / "current" / "bin" / "smartcity")
        restarter: Restarter
        if pid_file is not None:
            restarter = PidfileRestarter(
                pid_file,
                [
                    smartcity,
                    "edge",
                    "run",
                    "--config",
                    str(config.absolute()),
                    "--log-format",
                    "json",
                ],
                cfg.gateway.state_dir / "agent.log",
            )
        else:
            restarter = SystemdRestarter(unit)
        result = run_update(
            UpdateOptions(
                root=root,
                source=source,
                sha256=sha256,
                deadline_s=deadline_s,
                state_dir=cfg.gateway.state_dir,
                spool_path=cfg.spool_path,
                lock=requirements,
                installer=installer,
                check_args=["--config", str(config.absolute())],
                restarter=restarter,
                status=lambda: fetch_status(cfg, timeout=2.0),
                say=say,
                trusted_keys=cfg.update.trusted_keys,
                allow_downgrade=allow_downgrade,
                reinstall=reinstall,
            )
        )
    except UpdateError as exc:
        say(f"edge update: {exc}")
        return 1
    say(
        f"edge update: {result.version}: {result.status}"
        + (f" ({result.reason})" if result.reason else "")
    )
    return {"ok": 0, "failed": 1, "rolled_back": 2}.get(result.status, 3)
