"""Throwaway certificates and broker passwords for TLS tests (openssl and mosquitto_passwd CLIs).

``make_pki(dir, client_cn=...)`` writes, with EC P-256 keys valid for two days::

    ca.crt / ca.key            the test CA
    server.crt / server.key    CN localhost, SAN IP:127.0.0.1 + DNS:localhost, signed by the CA
    client.crt / client.key    CN client_cn, clientAuth, signed by the CA
    rogue.crt / rogue.key      CN client_cn, signed by another CA (must be refused)
    rogue-ca.crt               that other CA (a wrong CA bundle for a client)

Import as ``from tests.tls_helpers import make_pki``.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from smartcity._localstack import InfluxdTls, MosquittoTls

__all__ = ["Pki", "make_pki", "password_file"]


@dataclass(frozen=True)
class Pki:
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.dir / "client.crt"

    @property
    def client_key(self) -> Path:
        return self.dir / "client.key"

    @property
    def rogue_cert(self) -> Path:
        return self.dir / "rogue.crt"

    @property
    def rogue_key(self) -> Path:
        return self.dir / "rogue.key"

    @property
    def rogue_ca(self) -> Path:
        return self.dir / "rogue-ca.crt"

    def mosquitto_tls(
        self, *, require_certificate: bool = False, use_identity_as_username: bool = False
    ) -> MosquittoTls:
        """A TLS listener for :class:`smartcity._localstack.Mosquitto` with the server cert."""
        return MosquittoTls(
            ca_file=self.ca,
            cert_file=self.server_cert,
            key_file=self.server_key,
            require_certificate=require_certificate,
            use_identity_as_username=use_identity_as_username,
        )

    def influxd_tls(self) -> InfluxdTls:
        """HTTPS for :class:`smartcity._localstack.Influxd` with the server cert, verified
        by the helpers against this CA."""
        return InfluxdTls(cert_file=self.server_cert, key_file=self.server_key, ca_file=self.ca)


def _tool(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/bin") / name, Path("/usr/sbin") / name) if p.exists()), None
    )
    if found is None:
        pytest.fail(f"{name} is needed: apt-get install openssl mosquitto", pytrace=False)
    return found


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([_tool("openssl"), *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_pki(d: Path, *, client_cn: str = "client") -> Pki:
    """Write the CA, server, client and rogue certificates into ``d`` (created)."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "rogue-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
                 "-days", "2", "-subj", f"/CN=smartcity test {ca}", cwd=d)  # fmt: skip
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, cn, ca, ext in (
        ("server", "localhost", "ca", "server.ext"),
        ("client", client_cn, "ca", "client.ext"),
        ("rogue", client_cn, "rogue-ca", "client.ext"),
    ):
        _openssl("req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={cn}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
                 "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", f"{name}.crt",
                 cwd=d)  # fmt: skip
    return Pki(d)


def password_file(path: Path, users: dict[str, str]) -> Path:
    """A mosquitto password file holding ``users`` (name -> password)."""
    tool = _tool("mosquitto_passwd")
    for i, (user, password) in enumerate(users.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run([tool, "-b", *create, str(path), user, password],
                       check=True, capture_output=True, timeout=30)  # fmt: skip
    return path
