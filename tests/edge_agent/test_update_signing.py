"""Signed releases (edge_agent._signing) and the update's refusal of unsigned ones.

- keygen (0600, never over a file), sign, verify; the signature found beside a path or at
  ``<url>.sig`` (a real HTTP server);
- refused, each with its reason: no signature, a key not trusted, a changed file, a renamed
  file, a signature that is not one, a private key others may read;
- ``run_update`` with ``trusted_keys`` and a bad release: result ``failed`` with the reason,
  nothing installed, ``current`` untouched, the agent never restarted. (A running agent
  refusing and then taking a signed release: tests/edge_agent/test_edge_update.py.)
- ``update.trusted_keys`` in the config (base64, or ``${file:...}``), and the agent's
  imports stay free of PyNaCl.
- the version signature: a ``.sig`` whose version was edited, or that names another version
  than the file's, is refused; one without it (legacy) verifies with no version; the version
  policy (newer only, unless the order says allow_downgrade / reinstall, and then only with a
  signed version) and PEP 440 ordering. (Against a running agent: test_edge_update.py.)
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import itertools
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent import load_config
from edge_agent._errors import ConfigError
from edge_agent._releases import LOCK_NAME, compare_versions
from edge_agent._remote import remote_change_issues
from edge_agent._signing import (
    generate_key,
    read_signature,
    sign_release,
    verify_release,
)
from edge_agent._update import (
    UpdateError,
    UpdateOptions,
    UpdateResult,
    read_result,
    run_update,
    version_refusal,
)

WHEEL = "smartcity_telemetry-9.9.9-py3-none-any.whl"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Path, str]:
    """A release signed with a fresh key; (the release, the trusted public key)."""
    public = generate_key(tmp_path / "release-key")
    release = tmp_path / "dist" / WHEEL
    release.parent.mkdir()
    release.write_bytes(b"a release, byte for byte")
    sign_release(release, tmp_path / "release-key")
    return release, public


def _verify(release: Path, keys: list[str]) -> str:
    signed = verify_release(release, _sha(release), read_signature(str(release), release), keys)
    assert signed.version == "9.9.9"
    return signed.signer


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    public = generate_key(tmp_path / "k")
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "k.pub").read_text().strip() == public
    with pytest.raises(UpdateError, match="exists: not overwritten"):
        generate_key(tmp_path / "k")
    (tmp_path / "k").chmod(0o644)
    (tmp_path / "r").write_text("x")
    with pytest.raises(UpdateError, match=r"may be read by others \(mode 0644\): chmod 600"):
        sign_release(tmp_path / "r", tmp_path / "k")


def test_a_signed_release_verifies_with_its_key(signed: tuple[Path, str]) -> None:
    release, public = signed
    other = generate_key(release.parent.parent / "other-key")
    assert _verify(release, [other, public]).startswith("ed25519:")


def test_refusals_name_the_reason(tmp_path: Path, signed: tuple[Path, str]) -> None:
    release, public = signed
    sig = release.with_name(release.name + ".sig")
    # a key the gateway does not trust
    stranger = generate_key(tmp_path / "stranger")
    with pytest.raises(UpdateError, match=r"a key update\.trusted_keys does not hold"):
        _verify(release, [stranger])
    # the release changed after signing
    release.write_bytes(b"a release, byte for byte, and a backdoor")
    with pytest.raises(UpdateError, match="changed after signing"):
        _verify(release, [public])
    # a signed release renamed to another version
    release.write_bytes(b"a release, byte for byte")
    renamed = release.with_name("smartcity_telemetry-10.0.0-py3-none-any.whl")
    renamed.write_bytes(release.read_bytes())
    renamed.with_name(renamed.name + ".sig").write_bytes(sig.read_bytes())
    with pytest.raises(UpdateError, match="changed after signing"):
        _verify(renamed, [public])
    # a signature of the right file that is not the key's
    text = sig.read_text()
    forged = text.replace(text.split('"signature": "')[1][:4], "AAAA")
    sig.write_text(forged)
    with pytest.raises(UpdateError, match="does not verify"):
        _verify(release, [public])
    # not a signature at all, too large, or none
    sig.write_text("{}")
    with pytest.raises(UpdateError, match="is not a smartcity-release-signature/1 file"):
        _verify(release, [public])
    sig.write_bytes(b"x" * 5000)
    with pytest.raises(UpdateError, match="larger than a signature"):
        _verify(release, [public])
    sig.unlink()
    with pytest.raises(UpdateError, match=r"is not signed \(no .*\.sig\)"):
        _verify(release, [public])


@pytest.fixture
def server(signed: tuple[Path, str]) -> Iterator[str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *_a: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(signed[0].parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_the_signature_of_a_url_is_fetched_beside_it(
    tmp_path: Path, signed: tuple[Path, str], server: str
) -> None:
    release, public = signed
    download = tmp_path / "downloads" / release.name
    download.parent.mkdir()
    download.write_bytes(release.read_bytes())
    found = read_signature(server + release.name, download)
    assert found == release.with_name(release.name + ".sig").read_bytes()
    verify_release(download, _sha(download), found, [public])
    release.with_name(release.name + ".sig").unlink()
    assert read_signature(server + release.name, download) is None  # 404: not signed


class _Restarter:
    def __init__(self) -> None:
        self.restarts = 0

    def restart(self) -> None:
        self.restarts += 1

    def exited(self) -> int | None:
        return None


def _status() -> dict[str, Any]:
    raise AssertionError("the agent was asked for its status: the update went on")


def _layout(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(root, the running release, state dir): a release whose python is the test's own."""
    root = tmp_path / "opt"
    running = root / "releases" / "0.1.0-000000000000"
    (running / "bin").mkdir(parents=True)
    python = running / "bin" / "python"  # the test's interpreter, in the test's venv
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    (root / "current").symlink_to(running.relative_to(root))
    return root, running, tmp_path / "state"


def test_an_older_signed_release_fails_the_update_before_anything_is_installed(
    tmp_path: Path,
) -> None:
    """A replayed order for an old release that is signed with the trusted key."""
    from importlib.metadata import version

    public = generate_key(tmp_path / "release-key")
    old = tmp_path / "dist" / "smartcity_telemetry-0.0.1-py3-none-any.whl"
    old.parent.mkdir()
    old.write_bytes(b"an old release")
    sign_release(old, tmp_path / "release-key")
    root, running, state = _layout(tmp_path)
    restarter, said = _Restarter(), list[str]()
    result = _update(root, state, old, restarter, said, (public,))
    assert (result.status, result.version) == ("failed", "0.0.1")
    assert result.previous_version == version("smartcity-telemetry")
    assert result.reason is not None
    assert "older than the running" in result.reason
    assert "allow_downgrade" in result.reason
    assert any("signature of ed25519:" in line and "(version 0.0.1)" in line for line in said)
    assert restarter.restarts == 0
    assert (root / "current").resolve() == running
    assert sorted(p.name for p in (root / "releases").iterdir()) == [running.name]


def test_an_unsigned_release_fails_the_update_before_anything_is_installed(
    tmp_path: Path, signed: tuple[Path, str]
) -> None:
    release, public = signed
    stranger = generate_key(tmp_path / "stranger")
    root, running, state = _layout(tmp_path)
    restarter = _Restarter()
    said: list[str] = []
    for reason in ("a key update.trusted_keys does not hold", "is not signed"):
        if reason == "is not signed":
            release.with_name(release.name + ".sig").unlink()
        result = _update(root, state, release, restarter, said, (stranger,))
        assert (result.status, result.version) == ("failed", "9.9.9")
        assert result.reason is not None
        assert reason in result.reason
        kept = read_result(state)
        assert kept is not None
        assert (kept.status, kept.reason) == ("failed", result.reason)
        assert any(line.endswith(f"refused: {result.reason}") for line in said), said
    assert restarter.restarts == 0
    assert (root / "current").resolve() == running
    assert sorted(p.name for p in (root / "releases").iterdir()) == [running.name]
    assert not (root / "previous").exists()
    assert public  # the trusted key of the signing fixture is not the one configured


def _update(
    root: Path, state: Path, source: Path, restarter: _Restarter, said: list[str],
    keys: tuple[str, ...], **flags: bool,
) -> UpdateResult:
    """One update of the agent laid out under ``root`` from ``source``, trusting ``keys``
    (``flags``: allow_downgrade, reinstall, rollback_permitted)."""
    return run_update(
        UpdateOptions(
            root=root, source=str(source), sha256=None, deadline_s=10, state_dir=state,
            spool_path=state / "spool.sqlite3", lock=None, installer="pip", check_args=[],
            restarter=restarter, status=_status, say=said.append, trusted_keys=keys, **flags,
        )
    )  # fmt: skip


def _config(tmp_path: Path, update: object) -> Path:
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump({
        "gateway": {"id": "gw-1", "state_dir": str(tmp_path / "state")},
        "broker": {"host": "127.0.0.1"},
        "update": update,
    }))  # fmt: skip
    return path


def test_trusted_keys_in_the_config(tmp_path: Path) -> None:
    public = generate_key(tmp_path / "release-key")
    cfg = load_config(_config(tmp_path, {"trusted_keys": [public, "${file:release-key.pub}"]}))
    assert cfg.update.trusted_keys == (public, public)
    assert load_config(_config(tmp_path, {})).update.trusted_keys == ()
    with pytest.raises(ConfigError, match=r"update\.trusted_keys\[0\].*not base64"):
        load_config(_config(tmp_path, {"trusted_keys": ["/etc/release.pub"]}))
    short = "QUJD"  # base64 of 3 bytes
    with pytest.raises(ConfigError, match="3 bytes, not the 32 of an Ed25519 public key"):
        load_config(_config(tmp_path, {"trusted_keys": [short]}))


def test_a_remote_config_cannot_change_the_trusted_keys(tmp_path: Path) -> None:
    """Only the file on the gateway names the keys a release must be signed with."""
    running = load_config(_config(tmp_path, {"trusted_keys": [generate_key(tmp_path / "a")]}))
    desired = load_config(_config(tmp_path, {"trusted_keys": [generate_key(tmp_path / "b")]}))
    assert [i.path for i in remote_change_issues(running, desired)] == ["update"]
    assert remote_change_issues(running, running) == []


def test_the_agent_does_not_load_pynacl(tmp_path: Path) -> None:
    public = generate_key(tmp_path / "release-key")
    config = _config(tmp_path, {"trusted_keys": [public]})
    probe = (
        "import sys\n"
        "from edge_agent import load_config\n"
        "import edge_agent._agent, edge_agent._update, edge_agent.cli\n"
        f"load_config({str(config)!r})\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'nacl'], 'nacl imported'\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)


def test_the_version_is_signed_and_bound_to_the_file(
    tmp_path: Path, signed: tuple[Path, str]
) -> None:
    release, public = signed
    sig = release.with_name(release.name + ".sig")
    doc = json.loads(sig.read_text())
    assert doc["version"] == "9.9.9"
    # the version edited in the .sig: its signature no longer verifies
    sig.write_text(json.dumps({**doc, "version": "99.0.0"}))
    with pytest.raises(UpdateError, match="version was changed after signing"):
        _verify(release, [public])
    # a .sig that signs another version than the file's (made by another tool, say)
    from nacl.signing import SigningKey

    key = SigningKey(base64.b64decode((tmp_path / "release-key").read_text()))
    message = f"smartcity-release-signature/2\n{release.name}\n{_sha(release)}\n1.0.0\n"
    other = base64.b64encode(key.sign(message.encode()).signature).decode()
    sig.write_text(json.dumps({**doc, "version": "1.0.0", "version_signature": other}))
    with pytest.raises(
        UpdateError, match=r"signed as version 1\.0\.0, but the file is version 9\.9\.9"
    ):
        _verify(release, [public])
    # not base64 at all
    sig.write_text(json.dumps({**doc, "version_signature": "*"}))
    with pytest.raises(UpdateError, match=r"\.sig: "):
        _verify(release, [public])
    # a legacy signature (written before versions were signed): verifies, without a version
    legacy = {k: v for k, v in doc.items() if k not in ("version", "version_signature")}
    sig.write_text(json.dumps(legacy))
    got = verify_release(release, _sha(release), sig.read_bytes(), [public])
    assert got.version is None
    assert got.signer.startswith("ed25519:")


def test_versions_are_ordered_as_pep_440_says() -> None:
    ordered = [
        "0.9", "1.0.dev1", "1.0a1", "1.0a2.dev1", "1.0a2", "1.0b1", "1.0rc1", "1.0",
        "1.0+local.1", "1.0.post1.dev1", "1.0.post1", "1.0.1", "1.1", "1.10", "2.0",
    ]  # fmt: skip
    for older, newer in itertools.pairwise(ordered):
        assert compare_versions(older, newer) == -1, (older, newer)
        assert compare_versions(newer, older) == 1, (older, newer)
    assert compare_versions("1.0", "1.0.0") == 0
    with pytest.raises(UpdateError, match="not one this updater can order"):
        compare_versions("1.0-nightly", "1.0")


def test_version_policy() -> None:
    def why(
        version: str,
        *,
        down: bool = False,
        again: bool = False,
        signed: bool = True,
        signed_version: str | None = "same",
    ) -> str | None:
        return version_refusal(
            version,
            "0.2.0",
            allow_downgrade=down,
            reinstall=again,
            signed=signed,
            signed_version=version if signed_version == "same" else signed_version,
        )

    assert why("0.3.0") is None
    assert why("0.3.0", signed_version=None) is None  # a legacy signature upgrades
    assert "older than the running 0.2.0: downgrade refused" in (why("0.1.0") or "")
    assert "is the running version" in (why("0.2.0") or "")
    assert "is the running version" in (why("0.2.0", down=True) or "")
    assert "older than" in (why("0.1.0", again=True) or "")
    assert why("0.1.0", down=True) is None
    assert why("0.2.0", again=True) is None
    assert "legacy signature" in (why("0.1.0", down=True, signed_version=None) or "")
    assert "legacy signature" in (why("0.2.0", again=True, signed_version=None) or "")
    assert why("0.1.0", down=True, signed=False, signed_version=None) is None  # unsigned fleet
    assert "cannot order" in (why("0.1.0-nightly") or "")


def test_a_rollback_that_fails_to_install_leaves_the_previous_release_untouched(
    tmp_path: Path,
) -> None:
    """Rolling back to the release ``previous`` points at installs beside it: a failed
    install (here: the wheel is not one) must not have removed the known-good venv."""
    public = generate_key(tmp_path / "release-key")
    old = tmp_path / "dist" / "smartcity_telemetry-0.0.1-py3-none-any.whl"
    old.parent.mkdir()
    old.write_bytes(b"an old release")
    sign_release(old, tmp_path / "release-key")
    root, running, state = _layout(tmp_path)
    previous = root / "releases" / f"0.0.1-{_sha(old)[:12]}"
    (previous / "bin").mkdir(parents=True)
    (previous / "bin" / "smartcity").write_text("the known-good 0.0.1")
    (previous / LOCK_NAME).write_text("# 0.0.1's own lock\n")
    (root / "previous").symlink_to(previous.relative_to(root))
    said: list[str] = []
    result = _update(root, state, old, _Restarter(), said, (public,), allow_downgrade=True)
    assert result.status == "failed", said
    assert (previous / "bin" / "smartcity").read_text() == "the known-good 0.0.1"
    assert (root / "previous").resolve() == previous
    assert (root / "current").resolve() == running


@pytest.mark.parametrize("flag", ["reinstall", "allow_downgrade"])
def test_a_request_asks_for_the_running_version_only_if_root_lets_requests_roll_back(
    tmp_path: Path, flag: str
) -> None:
    """From a request file (the agent's), the same version is refused whatever it asks,
    unless root's unit says --accept-rollback-requests (here: rollback_permitted)."""
    from importlib.metadata import version

    public = generate_key(tmp_path / "release-key")
    running_version = version("smartcity-telemetry")
    same = tmp_path / "dist" / f"smartcity_telemetry-{running_version}-py3-none-any.whl"
    same.parent.mkdir()
    same.write_bytes(b"the running version, other bytes")
    sign_release(same, tmp_path / "release-key")
    root, running, state = _layout(tmp_path)
    said: list[str] = []
    result = _update(
        root, state, same, _Restarter(), said, (public,), rollback_permitted=False, **{flag: True}
    )
    assert result.status == "failed"
    assert result.reason is not None
    if flag == "reinstall":
        assert "--accept-rollback-requests" in result.reason
    else:  # not a downgrade, so not allowed as one: refused for being the running version
        assert "is the running version" in result.reason
    assert (root / "current").resolve() == running
    assert sorted(p.name for p in (root / "releases").iterdir()) == [running.name]
