"""The viewer's HTTP server: standard library ThreadingHTTPServer, a fixed set of routes.

    /, /static/viewer.{js,css}, /osd/...      the page and OpenSeadragon (held in memory)
    /mosaic.dzi, /mosaic_files/L/C_R.jpeg     DeepZoom description and tiles (tilesource.py)
    /api/info, /api/cell/ROW/COL              the grid; the tile placed in a cell (api.py)
    /tile/ID/original                         a tile's original, for tiles of this mosaic only

Nothing in a URL becomes a filesystem path. Paths with '..', '%', '\\' or '//' are 404 before
routing; unknown routes 404; malformed or out-of-range numbers 400.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from .. import assignment as asg
from ..errors import DatabaseError, MosaicError, UsageError
from .api import MosaicAPI
from .assets import load_assets
from .sources import open_source
from .tilesource import BadRequest, NotFound, RequestError, parse_int

log = logging.getLogger(__name__)

SAFE_PATH = re.compile(r"/[A-Za-z0-9_./-]*")
TILE_ROUTE = re.compile(r"/mosaic_files/([^/]*)/([^/]*)")
TILE_NAME = re.compile(r"([^_]*)_([^.]*)\.([a-z]{3,4})")
CELL_ROUTE = re.compile(r"/api/cell/([^/]*)/([^/]*)")
ORIGINAL_ROUTE = re.compile(r"/tile/([^/]*)/original")
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_warning(host: str) -> str | None:
    """A warning when `host` is not a loopback address (the mosaic and originals would be
    visible to others), else None."""
    if is_loopback(host):
        return None
    return (f"serving on {host}: anyone who can reach this address sees the mosaic and the originals of "
            "its tiles (the default, 127.0.0.1, is this machine only)")


class Viewer:
    """Everything one served mosaic needs: its tile source, assignment, database and assets."""

    def __init__(self, mosaic, *, db=None, db_fallback=None, osd_dir=None):
        from ..store.db import TileDB, saved_db_path
        self.assets = load_assets(osd_dir)          # first: the cheapest failure to report
        self.source = open_source(mosaic)
        try:
            saved = asg.load(mosaic)
            db_path = Path(saved_db_path(saved.meta.db, db, db_fallback))
            try:
                self.db = TileDB.open(db_path, readonly=True)
            except DatabaseError as e:
                hint = "" if db else " (moved? pass its new place with --db or $MOSAICDB_DB)"
                raise DatabaseError(f"{e}{hint}") from None
            cols, rows = saved.cols, saved.rows
            w, h = self.source.width, self.source.height
            if w % cols or h % rows or w // cols != h // rows:
                self.db.close()
                raise UsageError(f"{mosaic} is {w}x{h} px, which is not the {cols}x{rows} grid of its "
                                 "assignment: serve the output the assignment was saved with")
        except BaseException:
            self.source.close()
            raise
        self.api = MosaicAPI(saved, self.db, w, h)
        self.mosaic = Path(mosaic)

    def close(self) -> None:
        """Close the mosaic's file and the tile database."""
        self.source.close()
        self.db.close()

    def route(self, path: str) -> tuple[bytes, str, str]:
        """(body, content type, cache policy) for a URL path; RequestError otherwise."""
        if not SAFE_PATH.fullmatch(path) or ".." in path or "//" in path:
            raise NotFound("not found")
        if path == "/index.html":
            path = "/"
        if path in self.assets:
            body, ctype = self.assets[path]
            return body, ctype, "static"
        if path == "/mosaic.dzi":
            return self.source.dzi_xml().encode(), "application/xml; charset=utf-8", "data"
        if path == "/api/info":
            return _json(self.api.info()), "application/json", "data"
        m = TILE_ROUTE.fullmatch(path)
        if m:
            name = TILE_NAME.fullmatch(m.group(2))
            if not name:
                raise BadRequest(f"tile name {m.group(2)[:40]!r} is not COL_ROW.{self.source.format}")
            level = parse_int(m.group(1), "level")
            col, row = parse_int(name.group(1), "column"), parse_int(name.group(2), "row")
            return self.source.tile(level, col, row, name.group(3)), self.source.content_type, "data"
        m = CELL_ROUTE.fullmatch(path)
        if m:
            row, col = parse_int(m.group(1), "row"), parse_int(m.group(2), "column")
            return _json(self.api.cell(row, col)), "application/json", "data"
        m = ORIGINAL_ROUTE.fullmatch(path)
        if m:
            body, ctype = self.api.original(parse_int(m.group(1), "tile id"))
            return body, ctype, "data"
        raise NotFound("not found")


def _json(obj) -> bytes:
    return json.dumps(obj, default=str).encode()


class Handler(BaseHTTPRequestHandler):
    server_version = "mosaicdb"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections free their thread

    def do_GET(self):
        self._answer(head=False)

    def do_HEAD(self):
        self._answer(head=True)

    def _answer(self, head: bool) -> None:
        viewer: Viewer = self.server.viewer
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        try:
            self._check_host()
            body, ctype, cache = viewer.route(path)
            status = 200
        except RequestError as e:
            status, body, ctype, cache = e.status, str(e).encode(), "text/plain; charset=utf-8", "none"
        except MosaicError as e:
            status, body, ctype, cache = 500, str(e).encode(), "text/plain; charset=utf-8", "none"
        except Exception:
            log.exception("serving %s", path)
            status, body, ctype, cache = 500, b"internal error", "text/plain; charset=utf-8", "none"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "max-age=3600" if cache == "static" else "no-store")
        if ctype.startswith("text/html"):
            self.send_header("Content-Security-Policy", CSP)
            self.send_header("X-Frame-Options", "DENY")
        self.end_headers()
        if not head:
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    def _check_host(self) -> None:
        """On loopback, answer only requests addressed to a loopback name (no DNS rebinding)."""
        if not self.server.loopback:
            return
        host = (self.headers.get("Host") or "").strip()
        try:
            name = urlsplit("//" + host).hostname or ""
        except ValueError:
            name = ""
        if not is_loopback(name.lower()):
            raise _Forbidden(f"Host {host[:60]!r} is not this machine's loopback address")

    def log_message(self, fmt, *args):
        log.debug("%s %s", self.address_string(), fmt % args)


class _Forbidden(RequestError):
    status = 403


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def make_server(viewer: Viewer, host: str = "127.0.0.1", port: int = 8000) -> _Server:
    """A bound (not yet serving) server for `viewer`; `server.url` is its address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    cls = type("ViewerHTTPServer", (_Server,), {"address_family": family})
    try:
        httpd = cls((host, port), Handler)
    except OSError as e:
        if e.errno == 98 or "in use" in str(e):
            raise UsageError(f"port {port} on {host} is in use: choose another with --port (0: any free port)") from None
        raise UsageError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    httpd.viewer = viewer
    httpd.loopback = is_loopback(host)
    shown = f"[{host}]" if ":" in host else host
    httpd.url = f"http://{shown}:{httpd.server_address[1]}/"
    return httpd


def serve_in_thread(httpd: _Server) -> threading.Thread:
    """Start serving in a daemon thread (tests, embedding); stop with httpd.shutdown()."""
    t = threading.Thread(target=httpd.serve_forever, name="mosaic-serve", daemon=True)
    t.start()
    return t
