"""The SQLite catalog (WAL mode): tiles, the sources already seen, skipped inputs, settings.

A tile's id is also its row in the feature/thumbnail arrays and its id in the FAISS index.
Ids are never reused: `next_id` only grows, so a removed tile leaves a hole, not a shift.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
import urllib.parse
import uuid
from pathlib import Path

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tiles(
    id INTEGER PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    blob TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    format TEXT NOT NULL,
    origin TEXT NOT NULL,
    provenance TEXT NOT NULL DEFAULT '{}',
    added REAL NOT NULL,
    link_root TEXT
);
CREATE INDEX IF NOT EXISTS tiles_source ON tiles(source);
CREATE TABLE IF NOT EXISTS sources(
    key TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    status TEXT NOT NULL,
    hash TEXT
);
CREATE TABLE IF NOT EXISTS errors(source TEXT PRIMARY KEY, reason TEXT NOT NULL, at REAL NOT NULL);
"""
# CRC-32 of each committed run of array rows (features.f32, thumbs_<s>.u8): what `db check
# --deep`, renders and index builds verify, so a damaged array is never read as tiles.
_CHECKSUMS = """
CREATE TABLE IF NOT EXISTS checksums(
    array TEXT NOT NULL,
    start INTEGER NOT NULL,
    count INTEGER NOT NULL,
    crc INTEGER NOT NULL,
    PRIMARY KEY(array, start)
);
"""


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        # quoted: a '?', '#' or '%' in the path would otherwise be read as URI syntax. On a
        # read-only filesystem SQLite cannot make the WAL's shared-memory file: read the
        # catalog as an immutable file there (nobody can be writing to it).
        immutable = "&immutable=1" if not os.access(Path(path).parent, os.W_OK) else ""
        # (as bytes: a folder name that is not UTF-8 is still a valid path)
        con = sqlite3.connect(f"file:{urllib.parse.quote(os.fsencode(path))}?mode=ro{immutable}", uri=True, timeout=30,
                              check_same_thread=False)
    else:
        con = sqlite3.connect(os.fsencode(path), timeout=30, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
    con.row_factory = sqlite3.Row
    return con


def upgrade(con: sqlite3.Connection) -> None:
    """Bring a catalog made by an older mosaicdb up to this schema (writable connections):
    the checksums table, the link_root column, the database's uuid."""
    with con:
        con.executescript(_CHECKSUMS)
        cols = {r["name"] for r in con.execute("PRAGMA table_info(tiles)")}
        if cols and "link_root" not in cols:
            con.execute("ALTER TABLE tiles ADD COLUMN link_root TEXT")
        if con.execute("SELECT 1 FROM meta WHERE key = 'uuid'").fetchone() is None:
            set_meta(con, uuid=str(uuid.uuid4()))
        set_meta(con, schema_version=SCHEMA_VERSION)


def has_table(con: sqlite3.Connection, name: str) -> bool:
    return con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def create(con: sqlite3.Connection, settings: dict) -> None:
    with con:
        con.executescript(_SCHEMA + _CHECKSUMS)
        rows = {"schema_version": SCHEMA_VERSION, "next_id": 0, "version": 0, "uuid": str(uuid.uuid4()), **settings}
        con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                        [(k, json.dumps(v)) for k, v in rows.items()])


def get_meta(con: sqlite3.Connection) -> dict:
    return {r["key"]: json.loads(r["value"]) for r in con.execute("SELECT key, value FROM meta")}


def set_meta(con: sqlite3.Connection, **kv) -> None:
    con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in kv.items()])


def current_version(con: sqlite3.Connection) -> int:
    """The catalog's `version` as stored now (not as a TileDB last read it)."""
    return int(con.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])


def bump_version(con: sqlite3.Connection) -> None:
    """Every change to the set of tiles bumps `version`, which tells an index it is stale."""
    con.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'version'")


def known_sources(con: sqlite3.Connection, keys: list[str]) -> dict[str, tuple[int, int]]:
    out = {}
    for i in range(0, len(keys), 900):
        part = keys[i:i + 900]
        q = f"SELECT key, size, mtime_ns FROM sources WHERE key IN ({','.join('?' * len(part))})"
        out.update({r["key"]: (r["size"], r["mtime_ns"]) for r in con.execute(q, part)})
    return out


def existing_hashes(con: sqlite3.Connection, hashes: list[str]) -> dict[str, int]:
    out = {}
    for i in range(0, len(hashes), 900):
        part = hashes[i:i + 900]
        q = f"SELECT hash, id FROM tiles WHERE hash IN ({','.join('?' * len(part))})"
        out.update({r["hash"]: r["id"] for r in con.execute(q, part)})
    return out


def live_ids(con: sqlite3.Connection):
    import numpy as np
    import itertools
    cur = con.cursor()
    cur.row_factory = None   # plain tuples: a third faster than sqlite3.Row over a million rows
    return np.fromiter(itertools.chain.from_iterable(cur.execute("SELECT id FROM tiles ORDER BY id")), dtype=np.int64)


def text(s: str) -> str:
    r"""`s` as text SQLite can store: bytes of a file name that are not UTF-8 (Python keeps them
    as surrogates) become backslash escapes.

    >>> text("ok.png"), text("bad\udcff.png")
    ('ok.png', 'bad\\xff.png')
    """
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def record_error(con: sqlite3.Connection, source: str, reason: str) -> None:
    con.execute("INSERT OR REPLACE INTO errors VALUES (?, ?, ?)", (text(source), text(reason), time.time()))
