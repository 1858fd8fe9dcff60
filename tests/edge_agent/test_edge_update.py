"""``smartcity edge update``: a running agent (real mosquitto) updated to a new wheel, and to a
wheel that fails at start (rolled back on its own, 0 readings lost), across a spool-schema
migration; with ``update.trusted_keys``, only a release signed by a trusted key.

One wheel is built per module from a copy of the tree with ``pip wheel --no-deps
--no-build-isolation``: ``0.1.0`` (the tree as it is, spool schema 1); two variants are made
from it by rewriting the zip (version, patched modules, RECORD): ``0.1.1`` (spool schema 2: an
additive migration) and ``0.1.2`` (schema 2, and an uplink that raises 1 s after the
start, after the agent has migrated the spool and spooled readings). Venvs are made with
``--without-pip`` and filled by uv from its cache (``--installer``): about 0.3 s a release
instead of ~10 s with pip, at the cost of testing uv's install path rather than pip's (the
default on gateways; both install the same hashed lock with ``--no-deps``).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import http.server
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from edge_helpers import Central, Requester, wait_until

from edge_agent import load_config
from edge_agent._errors import CommandError, SpoolError
from edge_agent._signing import generate_key, sign_release
from edge_agent._spool import SCHEMA_VERSION, Spool
from edge_agent._status import StatusUnavailable, fetch_status
from edge_agent._update import (
    RESULT_NAME,
    UpdateError,
    fetch,
    install_release,
    order_update,
    read_request,
    read_result,
)
from smartcity._localstack import Mosquitto
from telemetry import Health, Topics, UpdateReport, decode_message

ROOT = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).with_name("uv")
LOCK = ROOT / "requirements" / "gateway.txt"
_SKIP = shutil.ignore_patterns(
    ".venv*",
    ".git",
    "tests",
    "bench",
    "artifacts",
    "var",
    "build",
    "*.egg-info",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "node_modules",
)
_SCHEMA_2 = (
    "SCHEMA_VERSION: Final = 2",
    '_MIGRATIONS: Final[dict[int, str]] = {2: "ALTER TABLE batches ADD COLUMN note TEXT;"}',
)
_BROKEN_UPLINK = """

async def _broken_run(self: Uplink) -> None:  # test release: fails at start
    await asyncio.sleep(1.0)
    raise RuntimeError("deliberately broken release")


Uplink.run = _broken_run  # type: ignore[method-assign]
"""


def _build(tmp: Path) -> Path:
    """The project's wheel, built from a copy of the tree (no build files left in it)."""
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=_SKIP)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(src),
            "-w",
            str(tmp),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return next(tmp.glob("smartcity_telemetry-*.whl"))


def _variant(base: Path, version: str, *, schema2: bool, broken: bool) -> Path:
    """``base`` as release ``version``: the same wheel with a new version (dist-info, METADATA,
    RECORD re-hashed) and patched modules; a second ``pip wheel`` would cost seconds."""
    old = base.name.split("-")[1]
    out = base.with_name(base.name.replace(f"-{old}-", f"-{version}-"))
    record: list[str] = []
    with zipfile.ZipFile(base) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            name = info.filename.replace(f"-{old}.dist-info/", f"-{version}.dist-info/")
            if name.endswith(".dist-info/RECORD"):
                record_name = name
                continue
            data = zin.read(info)
            if name.endswith(".dist-info/METADATA"):
                meta = data.decode().replace(f"\nVersion: {old}\n", f"\nVersion: {version}\n")
                data = meta.encode()
            elif name == "edge_agent/_spool_schema.py" and schema2:
                text = data.decode()
                for line in _SCHEMA_2:
                    key = line.split(":")[0]
                    start = text.index(f"\n{key}:") + 1
                    text = text[:start] + line + text[text.index("\n", start) :]
                data = text.encode()
            elif name == "edge_agent/_uplink.py" and broken:
                data += _BROKEN_UPLINK.encode()
            zout.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{name},sha256={digest.decode()},{len(data)}")
        record.append(f"{record_name},,")
        zout.writestr(record_name, "\n".join(record) + "\n")
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = _build(tmp_path_factory.mktemp("wheels"))
    return {
        "base": base,
        "good": _variant(base, "0.1.1", schema2=True, broken=False),
        "bad": _variant(base, "0.1.2", schema2=True, broken=True),
    }


@pytest.fixture(scope="module")
def wheel_server(wheels: dict[str, Path]) -> Iterator[str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *_a: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(wheels["base"].parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class Gateway:
    """An install layout with release 0.1.0 current and its agent running (pid file mode)."""

    def __init__(self, tmp: Path, base: Path, mosquitto: Mosquitto, topic_root: str) -> None:
        self.root = tmp / "opt"
        release, _ = install_release(self.root, base, _sha(base), lock=LOCK, installer=str(UV))
        (self.root / "current").symlink_to(release.relative_to(self.root))
        self.smartcity = self.root / "current" / "bin" / "smartcity"
        self.config = tmp / "etc" / "edge.yaml"
        self.config.parent.mkdir()
        self.state = tmp / "state"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "gateway": {"id": "gw-up", "state_dir": str(self.state)},
                    "broker": {
                        "host": "127.0.0.1",
                        "port": mosquitto.port,
                        "topic_root": topic_root,
                        "client_id": f"edge-gw-up-{topic_root}",
                        "backoff_initial_s": 0.2,
                        "backoff_max_s": 1.0,
                    },
                    "metrics": {"port": None},
                    "inputs": [{"type": "simulated", "name": "sim", "devices": 2, "rate_hz": 10}],
                    "batch": {"max_age_s": 0.2},
                    "health": {"interval_s": 0.5},
                    "tick_s": 0.05,
                }
            )
        )
        self.pidfile = tmp / "agent.pid"
        self.log = (tmp / "first-agent.log").open("ab")
        self.first = subprocess.Popen(
            [self.smartcity, "edge", "run", "--config", self.config, "--log-format", "json"],
            stdout=self.log,
            stderr=self.log,
            cwd="/",
        )
        self.pidfile.write_text(f"{self.first.pid}\n")
        self.first_stopped: float | None = None
        threading.Thread(target=self._reap, daemon=True).start()

    def _reap(self) -> None:
        self.first.wait()
        self.first_stopped = time.time()

    def update(self, *args: str | Path) -> tuple[int, list[tuple[float, str]]]:
        """Run ``edge update`` from the current release; its stderr lines, timestamped."""
        proc = subprocess.Popen(
            [
                self.smartcity,
                "edge",
                "update",
                *args,
                "--config",
                self.config,
                "--root",
                self.root,
                "--pid-file",
                self.pidfile,
                "--installer",
                UV,
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stderr is not None
        t = time.monotonic()
        with proc.stderr:
            lines = [(time.time(), line.rstrip()) for line in proc.stderr]
        code = proc.wait(120)
        print(f"edge update took {time.monotonic() - t:.1f} s")
        return code, lines

    def status(self) -> dict[str, Any]:
        """``edge status --json`` of the running agent (in-process: a CLI start costs ~1 s)."""
        return fetch_status(load_config(self.config), timeout=5)

    def stop(self) -> None:
        """Stop whichever agent runs now (the updater's child, or the first one)."""
        pids = {self.first.pid}
        with contextlib.suppress(OSError, ValueError):
            pids.add(int(self.pidfile.read_text()))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for pid in pids:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.log.close()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture
def gateway(
    tmp_path: Path, wheels: dict[str, Path], mosquitto: Mosquitto, topic_root: str
) -> Iterator[Gateway]:
    gw = Gateway(tmp_path, wheels["base"], mosquitto, topic_root)
    yield gw
    gw.stop()


def _seqs(central: Central) -> set[int]:
    with central.lock:
        return {b.seq for b in central.batches}


def _no_gap(central: Central, gw: Gateway) -> int:
    """Everything the spool numbered reached the broker: seqs 0..n without a hole, n at least
    the agent's next seq of a moment before (it keeps making batches meanwhile)."""

    def done() -> bool:
        st = gw.status()["spool"]
        seqs = _seqs(central)
        return bool(seqs) and seqs == set(range(max(seqs) + 1)) and max(seqs) + 1 >= st["next_seq"]

    wait_until(done, 20, "every spooled batch at the broker, no gap")
    return max(_seqs(central)) + 1


def _spool_schema(gw: Gateway) -> int:
    db = sqlite3.connect(gw.state / "spool.sqlite3")
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def _answers(gw: Gateway) -> bool:
    """The running agent serves its status (it has started)."""
    try:
        gw.status()
    except StatusUnavailable:
        return False
    return True


def _last_update(central: Central) -> UpdateReport | None:
    """The update report of the last health message the broker delivered."""
    raw = central.on(central.topics.health("gw-up"))
    return decode_message(raw[-1], Health).update if raw else None


@pytest.mark.integration
def test_update_ordered_by_command_comes_back_with_the_new_version(
    gateway: Gateway,
    wheels: dict[str, Path],
    wheel_server: str,
    mosquitto: Mosquitto,
    topic_root: str,
    central_factory: Callable[..., Central],
) -> None:
    central = central_factory(mosquitto, topic_root, "gw-up")
    wait_until(lambda: len(central.readings()) >= 20, 30, "readings from 0.1.0")
    assert gateway.status()["version"] == "0.1.0"
    assert _spool_schema(gateway) == 1
    # the API's command: the agent only leaves a request for the root-side updater
    ops = Requester(mosquitto.port, topic_root, "gw-up")
    good = wheels["good"]
    ops.request(
        central.topics.command("gw-up"),
        "update",
        b"u1",
        url=wheel_server + good.name,
        sha256=_sha(good),
        deadline=30,
    )
    wait_until(lambda: b"u1" in ops.replies, 10, "the update command's answer")
    ops.close()
    assert ops.replies[b"u1"].ok, ops.replies[b"u1"].error
    request = gateway.state / "update-request.json"
    assert request.exists()

    code, lines = gateway.update("--request", request, "--allow-url-prefix", wheel_server)
    out = "\n".join(line for _, line in lines)
    assert code == 0, out
    assert not request.exists()
    status = gateway.status()
    assert status["version"] == "0.1.1"
    assert status["links"]["uplink"] == "up"
    assert status["update"]["status"] == "ok"
    assert status["update"]["previous_version"] == "0.1.0"
    assert (gateway.root / "current").resolve().name.startswith("0.1.1-")
    assert (gateway.root / "previous").resolve().name.startswith("0.1.0-")
    assert _spool_schema(gateway) == 2  # migrated by 0.1.1
    n = _no_gap(central, gateway)
    # the new agent reports "pending" until the updater has seen it healthy, then "ok"
    wait_until(
        lambda: (r := _last_update(central)) is not None and r.status == "ok",
        10,
        "a health message with the update's result",
    )
    report = _last_update(central)
    assert report is not None
    assert (report.version, report.previous_version) == ("0.1.1", "0.1.0")
    print(f"update ok: {n} batches, no gap; {out}")


@pytest.mark.integration
def test_update_to_a_release_that_fails_at_start_rolls_back_losing_nothing(
    gateway: Gateway,
    wheels: dict[str, Path],
    mosquitto: Mosquitto,
    topic_root: str,
    central_factory: Callable[..., Central],
) -> None:
    central = central_factory(mosquitto, topic_root, "gw-up")
    wait_until(lambda: len(central.readings()) >= 20, 30, "readings from 0.1.0")
    bad = wheels["bad"]
    code, lines = gateway.update(
        bad, "--sha256", _sha(bad), "--deadline", "20", "--requirements", LOCK
    )
    out = "\n".join(line for _, line in lines)
    assert code == 2, out
    assert "rolled_back" in out, out
    assert "exited with code 1" in out, out
    rollback_at = next(t for t, line in lines if "rolling back" in line)
    status = gateway.status()
    assert status["version"] == "0.1.0"
    assert status["update"]["status"] == "rolled_back"
    assert status["update"]["version"] == "0.1.2"
    assert "exited with code 1" in status["update"]["reason"]
    assert (gateway.root / "current").resolve().name.startswith("0.1.0-")
    assert not any(p.name.startswith("0.1.2-") for p in (gateway.root / "releases").iterdir())
    # 0.1.2 migrated the spool to schema 2 and spooled readings before it failed; 0.1.0
    # (schema 1) used that spool as it is and sent them: every seq arrived, no gap
    assert _spool_schema(gateway) == 2
    n = _no_gap(central, gateway)
    stopped = gateway.first_stopped
    assert stopped is not None
    from_bad = {r for r in central.readings() if stopped * 1e9 < r[1] < rollback_at * 1e9}
    assert from_bad, "no readings made by the failed release reached the broker"
    print(f"rolled back: {n} batches, no gap, {len(from_bad)} readings from 0.1.2; {out}")


@pytest.mark.integration
def test_with_trusted_keys_only_a_release_signed_by_one_is_installed(
    gateway: Gateway, wheels: dict[str, Path], tmp_path: Path
) -> None:
    """Unsigned, signed by a stranger, changed after signing: refused before anything is
    installed, the running agent untouched; signed by the trusted key: installed."""
    trusted = generate_key(tmp_path / "release-key")
    generate_key(tmp_path / "stranger-key")
    doc = yaml.safe_load(gateway.config.read_text())
    doc["update"] = {"trusted_keys": [trusted]}
    gateway.config.write_text(yaml.safe_dump(doc))
    good = wheels["good"]

    def release(case: str, key: str | None, tamper: bool = False) -> Path:
        path = tmp_path / case / good.name
        path.parent.mkdir()
        shutil.copyfile(good, path)
        if key is not None:
            sign_release(path, tmp_path / key)
        if tamper:  # what an attacker who holds the download and the request can do
            with path.open("ab") as f:
                f.write(b"\0")
        return path

    running = (gateway.root / "current").resolve()
    wait_until(lambda: _answers(gateway), 30, "the running agent's status")
    refused = {
        "is not signed": release("unsigned", None),
        "a key update.trusted_keys does not hold": release("stranger", "stranger-key"),
        "changed after signing": release("tampered", "release-key", tamper=True),
    }
    for reason, path in refused.items():
        code, lines = gateway.update(path, "--sha256", _sha(path), "--requirements", LOCK)
        out = "\n".join(line for _, line in lines)
        assert code == 1, out
        assert reason in out, out
        assert "installing" not in out, out
        status = gateway.status()
        assert status["update"]["status"] == "failed"
        assert reason in status["update"]["reason"]
    assert gateway.first.poll() is None, "the running agent was stopped"
    assert gateway.status()["version"] == "0.1.0"
    assert (gateway.root / "current").resolve() == running
    assert [p.name for p in (gateway.root / "releases").iterdir()] == [running.name]

    signed = release("signed", "release-key")
    code, lines = gateway.update(
        signed, "--sha256", _sha(signed), "--deadline", "30", "--requirements", LOCK
    )
    out = "\n".join(line for _, line in lines)
    assert code == 0, out
    assert "signature of ed25519:" in out, out
    assert gateway.status()["version"] == "0.1.1"
    assert gateway.status()["update"]["status"] == "ok"


@pytest.mark.integration
def test_an_older_signed_release_is_refused_unless_the_order_allows_a_downgrade(
    gateway: Gateway,
    wheels: dict[str, Path],
    wheel_server: str,
    mosquitto: Mosquitto,
    topic_root: str,
    tmp_path: Path,
) -> None:
    """Signed 0.1.1 runs; orders (the agent's ``update`` command, carried out by ``edge
    update --request``) for the signed 0.1.0: refused as a downgrade, refused as the same
    version, refused with a legacy signature (no signed version) even with allow_downgrade,
    and installed with allow_downgrade and a version signature; then reinstalled."""
    trusted = generate_key(tmp_path / "release-key")
    doc = yaml.safe_load(gateway.config.read_text())
    doc["update"] = {"trusted_keys": [trusted]}
    gateway.config.write_text(yaml.safe_dump(doc))
    published = wheels["base"].parent / f"signed-{topic_root}"
    published.mkdir()
    for wheel in (wheels["base"], wheels["good"]):
        shutil.copyfile(wheel, published / wheel.name)
        sign_release(published / wheel.name, tmp_path / "release-key")
    old, new = published / wheels["base"].name, published / wheels["good"].name
    sig = old.with_name(old.name + ".sig")
    versioned_sig = sig.read_bytes()
    url = f"{wheel_server}{published.name}/"
    wait_until(lambda: _answers(gateway), 30, "the running agent's status")
    code, lines = gateway.update(url + new.name, "--sha256", _sha(new), "--deadline", "30",
                                 "--requirements", LOCK)  # fmt: skip
    assert code == 0, "\n".join(line for _, line in lines)
    assert gateway.status()["version"] == "0.1.1"
    running = (gateway.root / "current").resolve()

    request = gateway.state / "update-request.json"
    ops = Requester(mosquitto.port, topic_root, "gw-up")
    command = Topics(topic_root).command("gw-up")

    def order(corr: bytes, release: Path, **flags: bool) -> tuple[int, str]:
        nonlocal accept
        ops.request(command, "update", corr, url=url + release.name, sha256=_sha(release),
                    deadline=30, **flags)  # fmt: skip
        wait_until(lambda: corr in ops.replies, 10, "the update command's answer")
        assert ops.replies[corr].ok, ops.replies[corr].error
        code, lines = gateway.update("--request", request, "--allow-url-prefix", url,
                                     *(["--accept-rollback-requests"] if accept else []))
        return code, "\n".join(line for _, line in lines)

    accept = False

    try:
        refused = {
            b"replayed": ({}, "0.1.0 is older than the running 0.1.1: downgrade refused"),
            b"again": ({"reinstall": True}, "older than the running 0.1.1"),
        }
        for corr, (flags, reason) in refused.items():
            code, out = order(corr, old, **flags)
            assert code == 1, out
            assert reason in out, out
            assert "installing" not in out, out
            status = gateway.status()
            assert (status["version"], status["update"]["status"]) == ("0.1.1", "failed")
            assert reason in status["update"]["reason"]
            assert (gateway.root / "current").resolve() == running
        # a .sig from before version signatures: it verifies, but does not sign the version
        legacy = json.loads(versioned_sig)
        del legacy["version"], legacy["version_signature"]
        sig.write_text(json.dumps(legacy))
        code, out = order(b"legacy", old, allow_downgrade=True)
        assert code == 1, out
        assert "legacy signature" in out, out
        assert gateway.status()["version"] == "0.1.1"
        # the deliberate rollback, with the version signed: only if root lets requests ask
        sig.write_bytes(versioned_sig)
        code, out = order(b"not-root's-choice", old, allow_downgrade=True)
        assert code == 1, out
        assert "--accept-rollback-requests" in out, out
        assert gateway.status()["version"] == "0.1.1"
        accept = True
        code, out = order(b"rollback", old, allow_downgrade=True)
        assert code == 0, out
        status = gateway.status()
        assert (status["version"], status["update"]["status"]) == ("0.1.0", "ok")
        assert status["update"]["previous_version"] == "0.1.1"
        # the same version again: only as an explicit reinstall, into a fresh venv
        code, out = order(b"same", old)
        assert code == 1, out
        assert "0.1.0 is the running version" in out, out
        rolled_back_to = (gateway.root / "current").resolve()
        code, out = order(b"reinstall", old, reinstall=True)
        assert code == 0, out
        assert gateway.status()["version"] == "0.1.0"
        reinstalled = (gateway.root / "current").resolve()
        assert reinstalled != rolled_back_to
        # the rollback went beside the previous release (kept until the switch succeeded)
        assert rolled_back_to.name.startswith(f"0.1.0-{_sha(old)[:12]}.r")
        assert reinstalled.name.startswith(f"0.1.0-{_sha(old)[:12]}")
        assert (gateway.root / "previous").resolve() == rolled_back_to
    finally:
        ops.close()


# -- pieces, without processes -------------------------------------------------------------------
def test_update_command_arguments_are_checked(tmp_path: Path) -> None:
    sha = "a" * 64
    bad: list[dict[str, Any]] = [
        {"url": "file:///etc/shadow", "sha256": sha},
        {"url": "https://x/y.whl", "sha256": "nothex"},
        {"url": "https://x/y.whl"},
        {"url": "https://x/y.whl", "sha256": sha, "deadline": 1},
        {"url": "https://x/y.whl", "sha256": sha, "deadline": True},
        {"url": "https://x/y.whl", "sha256": sha, "extra": 1},
        {"url": "https://" + "x" * 3000, "sha256": sha},
        {"url": "https://x/y.whl", "sha256": sha, "allow_downgrade": "yes"},
        {"url": "https://x/y.whl", "sha256": sha, "reinstall": 1},
    ]
    for args in bad:
        with pytest.raises(CommandError):
            order_update(tmp_path, args)
    order_update(tmp_path, {"url": "https://x/y.whl", "sha256": sha, "allow_downgrade": True})
    taken = read_request(tmp_path / "update-request.json", ["https://x/"])
    assert (taken.url, taken.allow_downgrade, taken.reinstall) == ("https://x/y.whl", True, False)
    # a request an agent wrote before the flags existed: neither is allowed
    (tmp_path / "update-request.json").write_text(
        json.dumps({"url": "https://x/y.whl", "sha256": sha, "deadline": 60, "ts": 0})
    )
    taken = read_request(tmp_path / "update-request.json", ["https://x/"])
    assert (taken.deadline_s, taken.allow_downgrade, taken.reinstall) == (60, False, False)
    assert order_update(tmp_path, {"url": "https://x/y.whl", "sha256": sha})["accepted"]
    with pytest.raises(CommandError, match="is waiting"):
        order_update(tmp_path, {"url": "https://x/y.whl", "sha256": sha})
    with pytest.raises(UpdateError, match="allow-url-prefix"):
        read_request(tmp_path / "update-request.json", ["https://releases.example/"])
    assert not (tmp_path / "update-request.json").exists()  # taken, even when refused


def test_a_wrong_checksum_stops_the_update(tmp_path: Path) -> None:
    wheel = tmp_path / "smartcity_telemetry-9.9-py3-none-any.whl"
    wheel.write_bytes(b"not a wheel")
    with pytest.raises(UpdateError, match="sha256"):
        fetch(str(wheel), tmp_path, "0" * 64)
    with pytest.raises(UpdateError, match="needs --sha256"):
        fetch("https://releases.example/x.whl", tmp_path, None)


def test_update_result_is_read_tolerantly(tmp_path: Path) -> None:
    assert read_result(tmp_path) is None
    (tmp_path / RESULT_NAME).write_text("{broken")
    assert read_result(tmp_path) is None


def test_spool_of_a_newer_schema_is_used_when_compatible_and_refused_otherwise(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool.sqlite3"
    with Spool(path, budget_bytes=1 << 20) as spool:
        spool.append(0, b"x" * 10, 1)
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.execute("ALTER TABLE batches ADD COLUMN note TEXT")
    db.commit()
    db.close()
    with Spool(path, budget_bytes=1 << 20) as spool:  # compat still ours: used as it is
        assert spool.stats().batches == 1
        spool.append(1, b"y" * 10, 1)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    db.execute("UPDATE meta SET value = ? WHERE key = 'compat_version'", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(SpoolError, match="left untouched"):
        Spool(path, budget_bytes=1 << 20).open()
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM batches").fetchone()[0] == 2
    db.close()
