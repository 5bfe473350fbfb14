"""The tile database: catalog (SQLite), originals, thumbnail and feature arrays, ingest."""
from .db import TileDB, IngestReport, CheckReport  # noqa: F401
