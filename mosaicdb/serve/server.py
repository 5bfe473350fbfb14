"""The viewer's HTTP server: standard library ThreadingHTTPServer, a fixed set of routes.

    /, /static/viewer.{js,css}, /osd/...      the page and OpenSeadragon (held in memory)
    /mosaic.dzi, /mosaic_files/L/C_R.jpeg     DeepZoom description and tiles (tilesource.py, or
                                              rendered.py for an assignment and --recursive)
    /api/info, /api/cell/ROW/COL[/R/C...]     the grid; the tile placed in a cell, or in a cell of
                                              its sub-mosaic, and so on (api.py)
    /tile/ID/original                         a tile's original, for tiles of this mosaic (and of
                                              its sub-mosaics shown so far) only

Nothing in a URL becomes a filesystem path. Paths with '..', '%', '\\' or '//' are 404 before
routing; unknown routes 404; malformed or out-of-range numbers 400. Every request must be
addressed (Host header) to a name this server answers to: loopback names, and beyond
loopback the bound address, this machine's names and `--allow-host` ones (no DNS
rebinding from a browser page). Beyond loopback every request also needs the secret token of
the printed URL (`?token=`, then a cookie).
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
import secrets
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .. import assignment as asg
from ..errors import MosaicError, UsageError
from ..recursive.options import DEFAULT_GRID, RecursiveOptions
from ..render.cells import CellRenderer, PixelCache
from ..render.spill import SpillFile
from ..render.options import RenderOptions
from ..render.region import Node
from .api import MosaicAPI
from .assets import load_assets
from .rendered import DEFAULT_CACHE, RenderedSource, parse_cache
from .sources import open_source
from .tilesource import BadRequest, NotFound, RequestError, parse_int

log = logging.getLogger(__name__)

SAFE_PATH = re.compile(r"/[A-Za-z0-9_./-]*")
TILE_ROUTE = re.compile(r"/mosaic_files/([^/]*)/([^/]*)")
TILE_NAME = re.compile(r"([^_]*)_([^.]*)\.([a-z]{3,4})")
CELL_ROUTE = re.compile(r"/api/cell/([^/]*/[^/]*(?:/[^/]*/[^/]*)*)")
ORIGINAL_ROUTE = re.compile(r"/tile/([^/]*)/original")
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
TOKEN_COOKIE = "mosaic_token"
PIXEL_CACHE_BYTES = 256 << 20   # decoded originals kept by a rendered source (tiles above the thumbnails)
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
    return (f"serving on {host}: anyone who can reach this address and has the URL's token sees the mosaic and "
            "its tiles' originals (the default, 127.0.0.1, is this machine only)")


class Viewer:
    """Everything one served mosaic needs: its tile source, assignment, database and assets.

    `mosaic`: an output (.tif/.dzi/.png/.jpg, served as stored) or a saved assignment
    (OUT.mosaic.json: every tile rendered on request). `recursive` (depth) and `recursive_grid`:
    below the mosaic's deepest level each tile's area becomes a mosaic of that tile. `cache`:
    the rendered tiles kept ('256M', '5000t'); `tile_px`: cell size of a rendered mosaic
    (default: as saved)."""

    def __init__(self, mosaic, *, db=None, db_fallback=None, osd_dir=None, cache: str = DEFAULT_CACHE,
                 recursive: int = 0, recursive_grid: int = DEFAULT_GRID, tile_px: int | None = None):
        from ..store.db import open_for_assignment
        rec = RecursiveOptions(depth=recursive, grid=recursive_grid)   # options first: nothing read yet
        parse_cache(cache)
        self.assets = load_assets(osd_dir)          # then the cheapest failure to report
        rendered = asg.is_assignment(mosaic)
        stored = None if rendered else open_source(mosaic)
        db_ = None
        try:
            saved = asg.load(mosaic)
            db_ = open_for_assignment(saved.meta.db, saved.meta.db_uuid, saved.tile_ids, db, db_fallback,
                                      digest=saved.meta.tiles_digest)
            cols, rows = saved.cols, saved.rows
            if stored is not None:
                w, h = stored.width, stored.height
                if w % cols or h % rows or w // cols != h // rows:
                    raise UsageError(f"{mosaic} is {w}x{h} px, which is not the {cols}x{rows} grid of its "
                                     "assignment: serve the output the assignment was saved with")
                if rec.depth and stored.format != "jpeg":
                    raise UsageError(f"--recursive needs JPEG tiles; {mosaic} has {stored.format}: serve its "
                                     "assignment (.mosaic.json) instead")
                tile_px = w // cols
            self.source = self._source(mosaic, saved, db_, rec, cache, tile_px, stored)
        except BaseException:
            if stored is not None:
                stored.close()
            if db_ is not None:
                db_.close()
            raise
        self.db = db_
        self.api = MosaicAPI(saved, self.db, self.source.width, self.source.height, getattr(self.source, "subs", None))
        self.mosaic = Path(mosaic)

    @staticmethod
    def _source(mosaic, saved, db, rec, cache, tile_px, stored):
        """The stored source as it is, or a rendered one (an assignment, or any recursion)."""
        if stored is not None and not rec.depth:
            return stored
        ropts = RenderOptions.from_saved(saved.meta.render, source=str(mosaic), tile_px=tile_px)
        T = ropts.px
        big = tuple(t for t in (T, T // 2) if t > max(db.thumb_sizes))
        pixels = PixelCache(db, big, min(ropts.cache_bytes, PIXEL_CACHE_BYTES), SpillFile())
        node = Node(CellRenderer(db, saved, ropts, cache=pixels))
        subs = None
        if rec.depth:
            from ..recursive.submosaic import SubMosaics   # the matcher: only when recursing
            subs = SubMosaics(db, saved, ropts, rec, pixel_cache=pixels)
        return RenderedSource(mosaic, node, T, cache=cache, subs=subs, stored=stored)

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
            parts = m.group(1).split("/")
            steps = [(parse_int(parts[i], "row"), parse_int(parts[i + 1], "column")) for i in range(0, len(parts), 2)]
            return _json(self.api.cell_path(steps)), "application/json", "data"
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
        path, _, query = self.path.split("#", 1)[0].partition("?")
        set_cookie = False
        try:
            self._check_host()
            set_cookie = self._check_token(query)
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
        if set_cookie:
            self.send_header("Set-Cookie", f"{TOKEN_COOKIE}={self.server.token}; Path=/; HttpOnly; SameSite=Strict")
        self.end_headers()
        if not head:
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    def _check_host(self) -> None:
        """Answer only requests addressed to a name this server answers to (no DNS rebinding)."""
        hosts = self.headers.get_all("Host") or []
        if len(hosts) > 1:  # proxies and we could read different ones: answer neither (RFC 9112 3.2)
            raise BadRequest("more than one Host header")
        host = (hosts[0] if hosts else "").strip()
        try:
            name = (urlsplit("//" + host).hostname or "").lower()
        except ValueError:
            name = ""
        # an IP literal cannot be a rebinding attacker's name: beyond loopback any address of
        # this machine is fine (the token guards the rest)
        ip_ok = not self.server.loopback and _is_ip(name)
        if not (is_loopback(name) or ip_ok or name in self.server.allowed_hosts):
            raise _Forbidden(f"Host {host[:60]!r} is not a name this server answers to (add it with --allow-host)")

    def _check_token(self, query: str) -> bool:
        """Beyond loopback: the secret token, from the URL (then set as a cookie) or the cookie.
        Returns whether to set the cookie."""
        token = self.server.token
        if token is None:
            return False
        given = parse_qs(query).get("token", [""])[0]
        if given and hmac.compare_digest(given.encode("utf-8", "replace"), token.encode()):
            return True
        for part in (self.headers.get("Cookie") or "").split(";"):
            k, _, v = part.strip().partition("=")
            if k == TOKEN_COOKIE and hmac.compare_digest(v.encode("utf-8", "replace"), token.encode()):
                return False
        raise _Forbidden("this server needs the token of the URL it printed (?token=...)")

    def log_message(self, fmt, *args):
        log.debug("%s %s", self.address_string(), fmt % args)


class _Forbidden(RequestError):
    status = 403


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def reachable_address() -> str | None:
    """This machine's address on its default route (no packet is sent), or None."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            addr = s.getsockname()[0]
        return None if is_loopback(addr) or addr == "0.0.0.0" else addr
    except OSError:
        return None


def machine_names() -> set[str]:
    """This machine's host names and addresses, as a browser on the network would address it."""
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            names.add(info[4][0].lower())
    except OSError:
        pass
    return {n for n in names if n}


def make_server(viewer: Viewer, host: str = "127.0.0.1", port: int = 8000, *,
                allow_hosts=(), token: str | None = None) -> _Server:
    """A bound (not yet serving) server for `viewer`; `server.url` is its address (with the
    token beyond loopback). `allow_hosts`: more Host names to answer to."""
    if not 0 <= int(port) <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {port}")
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
    allowed = {h.strip().lower().strip("[]") for h in allow_hosts if h.strip()}
    if not httpd.loopback:
        allowed |= machine_names()
        if host not in ("0.0.0.0", "::", ""):
            allowed.add(host.lower())
    httpd.allowed_hosts = allowed
    httpd.token = None if httpd.loopback else (token or secrets.token_urlsafe(18))
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = reachable_address() or socket.gethostname()
    httpd.url = f"http://{shown}:{httpd.server_address[1]}/" + (f"?token={httpd.token}" if httpd.token else "")
    return httpd


def serve_in_thread(httpd: _Server) -> threading.Thread:
    """Start serving in a daemon thread (tests, embedding); stop with httpd.shutdown()."""
    t = threading.Thread(target=httpd.serve_forever, name="mosaic-serve", daemon=True)
    t.start()
    return t
