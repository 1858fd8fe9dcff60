"""Signed releases: Ed25519 signatures over a release file's name, sha256 and version (PyNaCl).

A release (a wheel or a locked requirements file) is signed by ``smartcity edge release
sign``, which writes ``<file>.sig`` beside it::

    {"format": "smartcity-release-signature/1", "file": "<name>", "sha256": "<hex>",
     "version": "<version>", "key": "<base64 public key>",
     "signature": "<base64>", "version_signature": "<base64>"}

Two signatures by the same key, over two messages (each line ending in a newline)::

    signature          smartcity-release-signature/1 | name | sha256
    version_signature  smartcity-release-signature/2 | name | sha256 | version

``signature`` is what agents before version signatures check (they ignore the keys they do
not know), so one ``.sig`` serves the whole fleet while it moves. ``version_signature`` binds
the version the updater orders releases by (:func:`edge_agent._releases.source_version`: the
wheel's name, or the ``smartcity-telemetry==`` pin of a requirements file) to the signing
key: a ``.sig`` whose version is not the file's is refused, and so is one whose version was
edited (the message no longer verifies). A ``.sig`` without it (written before) still
verifies, as a *legacy* signature: :attr:`SignedRelease.version` is ``None``, and the
updater then refuses what needs a signed version, a rollback or a reinstall
(:mod:`edge_agent._update`).

When the gateway config names ``update.trusted_keys``, ``edge update`` fetches
``<source>.sig`` (a path's sibling, or the URL with ``.sig`` appended) and refuses, before
installing anything, a release that has no signature, one made with a key it does not
trust, or one that does not verify.

Keys are files of one base64 line: the private key (the 32-byte seed, mode 0600, refused
when others may read it) and ``<key>.pub`` (what ``update.trusted_keys`` holds, or reads
with ``${file:...}``). PyNaCl is imported only here, inside the functions that sign or
verify: the agent never loads it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from edge_agent._releases import UpdateError, source_version

__all__ = [
    "SIGNATURE_FORMAT",
    "SIGNATURE_SUFFIX",
    "VERSION_SIGNATURE_FORMAT",
    "SignedRelease",
    "fingerprint",
    "generate_key",
    "parse_public_key",
    "read_signature",
    "sign_release",
    "verify_release",
]

SIGNATURE_FORMAT: Final = "smartcity-release-signature/1"
#: The message of ``version_signature`` starts with this line (never confused with the other).
VERSION_SIGNATURE_FORMAT: Final = "smartcity-release-signature/2"
SIGNATURE_SUFFIX: Final = ".sig"
#: A signature file is a few hundred bytes; anything larger is not one.
_MAX_SIGNATURE_BYTES: Final = 4096


def parse_public_key(text: str) -> bytes:
    """The 32 bytes of a base64 Ed25519 public key; :class:`ValueError` saying why not."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64 (an Ed25519 public key: 44 characters)") from None
    if len(raw) != 32:
        raise ValueError(f"{len(raw)} bytes, not the 32 of an Ed25519 public key")
    return raw


def fingerprint(public_key: bytes) -> str:
    """A short, stable name of a public key for messages: ``ed25519:<16 hex>``."""
    return "ed25519:" + hashlib.sha256(public_key).hexdigest()[:16]


def _message(name: str, sha256: str) -> bytes:
    return f"{SIGNATURE_FORMAT}\n{name}\n{sha256}\n".encode()


def _version_message(name: str, sha256: str, version: str) -> bytes:
    return f"{VERSION_SIGNATURE_FORMAT}\n{name}\n{sha256}\n{version}\n".encode()


@dataclass(frozen=True, slots=True)
class SignedRelease:
    """A verified signature: the key that made it, and the version it signed (``None``: a
    legacy signature, made before versions were signed)."""

    signer: str
    version: str | None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def generate_key(path: Path) -> str:
    """Write a new private key to ``path`` (mode 0600, never over an existing file) and its
    public key to ``<path>.pub``; return the public key (base64)."""
    from nacl.signing import SigningKey

    key = SigningKey.generate()
    public = base64.b64encode(bytes(key.verify_key)).decode()
    pub_path = path.with_name(path.name + ".pub")
    for p in (path, pub_path):
        if p.exists():
            raise UpdateError(f"{p} exists: not overwritten")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(base64.b64encode(bytes(key)).decode() + "\n")
    pub_path.write_text(public + "\n", encoding="ascii")
    return public


def _read_private_key(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise UpdateError(f"cannot read the key {path}: {exc}") from exc
    if stat.S_IMODE(mode) & 0o077:
        raise UpdateError(
            f"the key {path} may be read by others (mode {stat.S_IMODE(mode):04o}): chmod 600 it"
        )
    try:
        seed = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        seed = b""
    if len(seed) != 32:
        raise UpdateError(f"{path} is not a key written by `smartcity edge release keygen`")
    return seed


def sign_release(release: Path, key_file: Path) -> Path:
    """Sign ``release`` with the private key in ``key_file``; write and return its ``.sig``."""
    from nacl.signing import SigningKey

    key = SigningKey(_read_private_key(key_file))
    if not release.is_file():
        raise UpdateError(f"{release}: no such file")
    sha = _sha256(release)
    version = source_version(release)
    name = release.name

    def sign(message: bytes) -> str:
        return base64.b64encode(key.sign(message).signature).decode()

    doc = {
        "format": SIGNATURE_FORMAT,
        "file": name,
        "sha256": sha,
        "version": version,
        "key": base64.b64encode(bytes(key.verify_key)).decode(),
        "signature": sign(_message(name, sha)),
        "version_signature": sign(_version_message(name, sha, version)),
    }
    out = release.with_name(release.name + SIGNATURE_SUFFIX)
    out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return out


def read_signature(source: str, release: Path) -> bytes | None:
    """The signature file of ``source``: ``<url>.sig`` for an http(s) URL, the sibling
    ``<release>.sig`` for a path; ``None`` when there is none."""
    if source.startswith(("https://", "http://")):
        import urllib.error
        import urllib.request

        url = source + SIGNATURE_SUFFIX
        try:
            # S310: the scheme is http(s), checked above
            with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310
                data: bytes = resp.read(_MAX_SIGNATURE_BYTES + 1)
        except urllib.error.HTTPError as exc:
            with exc:
                if exc.code == 404:
                    return None
            raise UpdateError(f"cannot download the signature {url}: HTTP {exc.code}") from None
        except OSError as exc:
            raise UpdateError(f"cannot download the signature {url}: {exc}") from exc
    else:
        path = release.with_name(release.name + SIGNATURE_SUFFIX)
        try:
            with path.open("rb") as f:
                data = f.read(_MAX_SIGNATURE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UpdateError(f"cannot read the signature {path}: {exc}") from exc
    if len(data) > _MAX_SIGNATURE_BYTES:
        raise UpdateError(f"the signature of {release.name} is larger than a signature")
    return data


def _field(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str):
        raise UpdateError(f"signature: {key} missing or not a string")
    return value


def verify_release(
    release: Path, sha256: str, signature: bytes | None, trusted_keys: Sequence[str]
) -> SignedRelease:
    """Check ``signature`` (a ``.sig`` file's bytes, or ``None``: there is none) of the file
    ``release`` whose sha256 is ``sha256`` against ``trusted_keys`` (base64); return who
    signed it and the version signed, or raise :class:`UpdateError` saying why it is refused."""
    name = release.name
    if signature is None:
        raise UpdateError(
            f"{name} is not signed (no {name}{SIGNATURE_SUFFIX}); update.trusted_keys is set, "
            "so unsigned releases are refused"
        )
    try:
        doc = json.loads(signature)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or doc.get("format") != SIGNATURE_FORMAT:
        raise UpdateError(f"{name}{SIGNATURE_SUFFIX} is not a {SIGNATURE_FORMAT} file")
    try:
        public = parse_public_key(_field(doc, "key"))
        raw = base64.b64decode(_field(doc, "signature"), validate=True)
        raw_versioned = None
        if "version_signature" in doc:  # absent: a legacy signature (module docstring)
            raw_versioned = base64.b64decode(_field(doc, "version_signature"), validate=True)
    except (ValueError, binascii.Error) as exc:
        raise UpdateError(f"{name}{SIGNATURE_SUFFIX}: {exc}") from None
    trusted = {parse_public_key(k) for k in trusted_keys}
    signer = fingerprint(public)
    if public not in trusted:
        raise UpdateError(f"{name} is signed by {signer}, a key update.trusted_keys does not hold")
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    key = VerifyKey(public)
    try:
        key.verify(_message(name, sha256), raw)
    except (BadSignatureError, ValueError):
        if doc.get("sha256") != sha256 or doc.get("file") != name:
            raise UpdateError(
                f"{name} is not the file {signer} signed ({doc.get('file')}, sha256 "
                f"{doc.get('sha256')}; this one: {sha256}): it was changed after signing"
            ) from None
        raise UpdateError(f"the signature of {name} does not verify with {signer}") from None
    if raw_versioned is None:
        return SignedRelease(signer, None)
    signed_version = _field(doc, "version")
    try:
        key.verify(_version_message(name, sha256, signed_version), raw_versioned)
    except (BadSignatureError, ValueError):
        raise UpdateError(
            f"the version signature of {name} (version {signed_version!r}) does not verify "
            f"with {signer}: the version was changed after signing"
        ) from None
    actual = source_version(release)
    if signed_version != actual:
        raise UpdateError(
            f"{name} was signed as version {signed_version}, but the file is version {actual}"
        )
    return SignedRelease(signer, signed_version)
