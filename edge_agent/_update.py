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
covers the version (a legacy ``.sig`` is refused for them). A request file (written by the
unprivileged agent) may ask for either only when root's unit passes
``--accept-rollback-requests``; without it a replayed or forged order for an old signed
release installs nothing, and only root at the gateway can roll back.
Hierarchy: ``EdgeError`` > ``UpdateError`` (anything that stops an update before a switch).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from edge_agent._errors import EdgeError
from edge_agent._releases import (
    LOCK_NAME,
    PROJECT,
    PidfileRestarter,
    Restarter,
    SystemdRestarter,
    UpdateError,
    compare_versions,
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
from edge_agent._update_files import (
    REQUEST_NAME,
    RESULT_NAME,
    Status,
    UpdateRequest,
    UpdateResult,
    order_update,
    read_request,
    read_result,
    write_result,
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
    #: Whether this updater takes ``allow_downgrade``/``reinstall`` at all: an order from a
    #: request file (written by the unprivileged agent, which may be the hostile party)
    #: only with root's ``--accept-rollback-requests``.
    rollback_permitted: bool = True


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
    if refusal is None and not o.rollback_permitted and compare_versions(version, old_version) < 1:
        refusal = (
            "the order asks for a rollback or a reinstall, which this gateway's updater takes "
            "from a request only with --accept-rollback-requests (its systemd unit, set by root)"
        )
    if refusal is not None:
        o.say(f"refused: {refusal}")
        log.warning(
            "update refused", extra={"version": version, "running": old_version, "reason": refusal}
        )
        return result("failed", refusal)
    into = release_dir(root, version, sha)
    own_lock: Path | None = None
    if into.resolve() in (old, old_previous):
        # The running release's very bytes (a reinstall) or the previous one's (a rollback):
        # both stay untouched until the switch succeeded, so a failed install still has
        # them to go back to; the new venv goes beside them, with the release's own lock.
        own_lock = into / LOCK_NAME if (into / LOCK_NAME).exists() else None
        into = into.with_name(f"{into.name}.r{time.time_ns():x}")
    lock = o.lock or own_lock or (old / LOCK_NAME if (old / LOCK_NAME).exists() else None)
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
    accept_rollback_requests: bool = False,
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
                rollback_permitted=request is None or accept_rollback_requests,
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
