"""A local XYZ tile server for the base-map tests: real PNG tiles over HTTP on loopback.

Each tile is a 256x256 PNG with a pale fill and a darker one-pixel frame, so a screenshot
shows the tile grid under the drawing. Every request is recorded (path and Referer).
"""

from __future__ import annotations

import re
import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_TILE = re.compile(r"^/tiles/(\d{1,2})/(\d{1,8})/(\d{1,8})\.png$")


def png_tile(size: int = 256, fill: tuple[int, int, int] = (222, 228, 214),
             frame: tuple[int, int, int] = (150, 160, 140)) -> bytes:
    """An RGB PNG of ``size`` x ``size`` pixels: ``fill`` with a one-pixel ``frame``."""
    edge = bytes(frame) * size
    middle = bytes(frame) + bytes(fill) * (size - 2) + bytes(frame)
    rows = [edge] + [middle] * (size - 2) + [edge]
    raw = b"".join(b"\x00" + row for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


class TileServer:
    """``http://127.0.0.1:{port}/tiles/{z}/{x}/{y}.png``; anything else is 404."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()
        tile = png_tile()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner._lock:
                    owner.requests.append((self.path, self.headers.get("Referer")))
                if _TILE.match(self.path):
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(tile)))
                    self.end_headers()
                    self.wfile.write(tile)
                else:
                    self.send_error(404)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.template = f"http://127.0.0.1:{self.port}/tiles/{{z}}/{{x}}/{{y}}.png"
        self._thread = threading.Thread(target=self._server.serve_forever, name="tiles",
                                        daemon=True)
        self._thread.start()

    def tiles(self) -> list[tuple[int, int, int]]:
        with self._lock:
            paths = [p for p, _ in self.requests]
        return [tuple(int(v) for v in m.groups()) for p in paths  # type: ignore[misc]
                if (m := _TILE.match(p))]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
