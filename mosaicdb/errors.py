"""The exception hierarchy. The CLI turns every `MosaicError` into a one-line message."""


class MosaicError(Exception):
    """Base class: a problem the user can fix; the message says what to do."""


class UsageError(MosaicError):
    """An option or argument is invalid or conflicts with another."""


class DatabaseError(MosaicError):
    """The tile database is missing, not a database, or inconsistent."""


class DatabaseLocked(DatabaseError):
    """Another process holds the database's write lock."""


class EmptyDatabase(DatabaseError):
    """The database holds no tiles."""


class IndexStale(DatabaseError):
    """The vector index does not cover the catalog."""


class ImageError(MosaicError):
    """An image could not be read or decoded."""


class MatchError(MosaicError):
    """No assignment satisfies the requested repeat constraints."""


class RenderError(MosaicError):
    """An output cannot be written as requested."""


class ModelError(MosaicError):
    """A model file is missing, damaged, not ours, or does not fit its configuration."""


class MissingDependency(MosaicError):
    """An optional package is needed; the message holds the install hint."""


def choice(name: str, value, table: dict):
    """Look `value` up in `table`; an unknown value raises UsageError listing the allowed ones."""
    try:
        return table[value]
    except (KeyError, TypeError):
        allowed = ", ".join(sorted(map(str, table)))
        raise UsageError(f"unknown {name} {value!r}: choose one of {allowed}") from None
