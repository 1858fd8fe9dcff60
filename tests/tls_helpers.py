"""Throwaway certificates and broker passwords for TLS tests (openssl and mosquitto_passwd CLIs).

``make_pki(dir, client_cn=...)`` writes, with EC P-256 keys valid for two days::

    ca.crt / ca.key            the test CA
    server.crt / server.key    CN localhost, SAN IP:127.0.0.1 + DNS:localhost, signed by the CA
    client.crt / client.key    CN client_cn, clientAuth, signed by the CA
    rogue.crt / rogue.key      CN client_cn, signed by another CA (must be refused)
    rogue-ca.crt               that other CA (a wrong CA bundle for a client)

``MutualTlsProxy(pki, upstream)`` terminates TLS with the server certificate, requires a
client certificate from the CA and forwards to a plain TCP service (influxd over HTTP).

Import as ``from tests.tls_helpers import make_pki``.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from smartcity._localstack import InfluxdTls, MosquittoTls

__all__ = ["MutualTlsProxy", "Pki", "make_pki", "password_file"]


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


def issue_client_cert(pki: Pki, cn: str, *, rogue: bool = False) -> tuple[Path, Path]:
    """A client certificate and key for ``cn``, signed by the test CA (or the rogue CA)."""
    ca = "rogue-ca" if rogue else "ca"
    name = f"{ca}-{cn}"
    d = pki.dir
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}",
             cwd=d)  # fmt: skip
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-extfile", "client.ext", "-out", f"{name}.crt",
             cwd=d)  # fmt: skip
    return d / f"{name}.crt", d / f"{name}.key"


def password_file(path: Path, users: dict[str, str]) -> Path:
    """A mosquitto password file holding ``users`` (name -> password)."""
    tool = _tool("mosquitto_passwd")
    for i, (user, password) in enumerate(users.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run([tool, "-b", *create, str(path), user, password],
                       check=True, capture_output=True, timeout=30)  # fmt: skip
    return path


class MutualTlsProxy:
    """A TLS-terminating TCP proxy that requires a client certificate signed by ``pki.ca``
    and forwards the plain bytes to ``upstream`` (host, port): what sits in front of an
    InfluxDB whose clients must present certificates (influxd 1.x cannot ask for one).

    ``with MutualTlsProxy(pki, ("127.0.0.1", influxd.port)) as proxy: proxy.url``. Runs its
    own event loop on a thread; ``accepted`` counts clients that passed the handshake.
    """

    def __init__(self, pki: Pki, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
        self._ctx.verify_mode = ssl.CERT_REQUIRED
        self._ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="tls-proxy")  # fmt: skip
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepted = 0
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1  # only called once the handshake (client certificate) succeeded
        task = self._loop.create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connection, "127.0.0.1", 0, ssl=self._ctx
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def __enter__(self) -> MutualTlsProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
