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
"""

from __future__ import annotations

import functools
import hashlib
import http.server
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
from edge_agent._remote import remote_change_issues
from edge_agent._signing import (
    generate_key,
    read_signature,
    sign_release,
    verify_release,
)
from edge_agent._update import UpdateError, UpdateOptions, read_result, run_update

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
    return verify_release(release, _sha(release), read_signature(str(release), release), keys)


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


def test_an_unsigned_release_fails_the_update_before_anything_is_installed(
    tmp_path: Path, signed: tuple[Path, str]
) -> None:
    release, public = signed
    stranger = generate_key(tmp_path / "stranger")
    root = tmp_path / "opt"
    running = root / "releases" / "0.1.0-000000000000"
    (running / "bin").mkdir(parents=True)
    python = running / "bin" / "python"  # the test's interpreter, in the test's venv
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    (root / "current").symlink_to(running.relative_to(root))
    state = tmp_path / "state"
    restarter = _Restarter()
    said: list[str] = []
    for reason in ("a key update.trusted_keys does not hold", "is not signed"):
        if reason == "is not signed":
            release.with_name(release.name + ".sig").unlink()
        result = run_update(
            UpdateOptions(
                root=root, source=str(release), sha256=None, deadline_s=10, state_dir=state,
                spool_path=state / "spool.sqlite3", lock=None, installer="pip", check_args=[],
                restarter=restarter, status=_status, say=said.append, trusted_keys=(stranger,),
            )
        )  # fmt: skip
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
