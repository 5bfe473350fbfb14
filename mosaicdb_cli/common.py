"""Shared CLI pieces: the error-mapping root group, option decorators, output helpers.

Exit codes: 0 success; 1 the request could not be carried out (a `MosaicError`, or the system
refusing: disk full, permission denied); 2 the request is wrong (a usage error: a bad option,
argument or combination); 70 an internal error (a bug: the traceback is printed, please
report it); 130 interrupted (Ctrl-C); 143 / 129 terminated by SIGTERM / SIGHUP (cleaned up
like Ctrl-C).
"""
from __future__ import annotations

import errno
import json
import logging
import re
import signal
import traceback

import click

from mosaicdb.errors import MosaicError, UsageError

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_BUG = 70
EXIT_INTERRUPTED = 130
EXIT_HANGUP = 128 + signal.SIGHUP        # 129
EXIT_TERMINATED = 128 + signal.SIGTERM   # 143

# The table `mosaic --help` shows (and README repeats); tests check it against the codes above.
EXIT_CODES = {
    EXIT_OK: "done",
    EXIT_RUNTIME: "the request could not be carried out (damaged database, full disk...)",
    EXIT_USAGE: "the request is wrong: a bad option or argument (the message names it)",
    EXIT_BUG: "internal error (a bug): the traceback is printed; please report it",
    EXIT_HANGUP: "hung up (SIGHUP); cleaned up like Ctrl-C",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); nothing is left half-written",
    EXIT_TERMINATED: "terminated (SIGTERM); cleaned up like Ctrl-C",
}

DB_ENV = "MOSAICDB_DB"

# OS errors that describe the machine, not our code: reported in one line like any runtime error
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                      errno.EMFILE, errno.ENFILE, errno.EFBIG, errno.ENAMETOOLONG, errno.ELOOP, errno.EISDIR,
                      errno.ENOTDIR, errno.ENOENT, errno.EEXIST, errno.EXDEV, errno.EBUSY, errno.ETXTBSY}


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread like Ctrl-C so that every cleanup path
    (temporary files, worker pools, locks) runs the same way."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP end the command as cleanly as Ctrl-C does (exit 128 + signal)."""
    def handler(signum, frame):
        raise Terminated(signum)

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, handler)


class OptionError(click.ClickException):
    """A usage error found by the library: one line, exit 2 (click's own usage errors also
    exit 2, with the usage line)."""
    exit_code = EXIT_USAGE


class MosaicGroup(click.Group):
    """Maps library errors to one-line messages and exit codes; anything else is a bug and
    gets its traceback and exit 70."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:
            if ctx.find_root().params.get("debug") and not isinstance(e, MosaicError):
                raise  # --debug: the full traceback of system errors too
            self._map_error(ctx)
        except KeyboardInterrupt as e:
            if isinstance(e, Terminated):
                echo(f"Terminated ({signal.Signals(e.signum).name}).", err=True)
                ctx.exit(128 + e.signum)
            echo("Interrupted.", err=True)
            ctx.exit(EXIT_INTERRUPTED)

    @staticmethod
    def _map_error(ctx):
        """Called in an `except` block: re-raise the current error as what the user sees."""
        try:
            raise
        except UsageError as e:
            raise OptionError(printable(e)) from None
        except MosaicError as e:
            raise click.ClickException(printable(e)) from None
        except OSError as e:
            if e.errno == errno.EPIPE:  # `mosaic ... | head`: the reader left; so do we, quietly
                quiet_broken_pipe()
                ctx.exit(EXIT_BROKEN_PIPE)
            if e.errno not in ENVIRONMENT_ERRNOS:
                _bug(ctx)
            where = f" ({e.filename})" if getattr(e, "filename", None) else ""
            raise click.ClickException(printable(f"{e.strerror or e}{where}")) from None
        except MemoryError:
            raise click.ClickException("out of memory: try a smaller --grid, --tile-px or --cache") from None
        except Exception as e:
            if type(e).__module__ == "sqlite3" and "disk is full" in str(e):
                raise click.ClickException("no space left on the device of the tile database (sqlite: "
                                           f"{e}): free some space and run the command again") from None
            if type(e).__module__ == "sqlite3" and type(e).__name__ not in ("ProgrammingError", "InterfaceError"):
                # the catalog file itself is damaged (a zeroed page, a truncated file)
                raise click.ClickException(f"the tile database's catalog is damaged or unreadable ({e}): restore "
                                           "catalog.sqlite from a copy, or rebuild the database") from None
            _bug(ctx)


EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE   # 141, as a shell reports a process killed by it


def quiet_broken_pipe() -> None:
    """After EPIPE on stdout: no further write (the interpreter's last flush) may fail again."""
    from mosaicdb.io import silence_stdout
    silence_stdout()


def _bug(ctx) -> None:
    echo(traceback.format_exc(), err=True, nl=False)
    echo("Error: internal error (a bug in mosaicdb, not in what you asked for); please report it "
               "with the traceback above.", err=True)
    ctx.exit(EXIT_BUG)


def root_epilog() -> str:
    """The root --help's closing sections; `\\b` keeps each block's lines as written."""
    width = max(len(str(c)) for c in EXIT_CODES) + 2
    codes = "\n".join(f"  {c:<{width}}{what}" for c, what in EXIT_CODES.items())
    return (f"\b\nExit codes:\n{codes}\n\n"
            "\b\nEnvironment:\n"
            f"  {DB_ENV}             the tile database when DB or --db is not given\n"
            "  MOSAICDB_OPENSEADRAGON  OpenSeadragon's build folder (as serve --osd-dir)\n"
            "  TQDM_DISABLE=1          no progress bars (never drawn off a terminal)\n\n"
            "\b\nShell completion (bash; zsh_source or fish_source for those shells):\n"
            '  eval "$(_MOSAIC_COMPLETE=bash_source mosaic)"')


def _root_flag(name: str) -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get(name))


class OutPath(click.Path):
    """click.Path for an --out that refuses an empty name (it meant the current folder, so
    `--out ""` from an unset shell variable wrote files there)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("is empty: give a file name (or a folder)", param, ctx)
        return super().convert(value, param, ctx)


def quiet_option(f):
    """-q on a command; `mosaic -q COMMAND` (on the root group) sets it for every command."""
    return click.option("-q", "--quiet", is_flag=True, help="No progress bars or informational messages.",
                        callback=lambda ctx, param, value: value or _root_flag("quiet"))(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")(f)


def db_argument(f):
    """The DB positional; it may be left out when $MOSAICDB_DB names the database."""
    return click.argument("db", type=click.Path(file_okay=False, path_type=str), envvar=DB_ENV)(f)


def after_db(name: str, *, nargs: int = -1, required: bool = True, **kw):
    """A positional that follows DB. With $MOSAICDB_DB set, DB may be left out: the first
    positional is then taken for DB only when it is a tile database (or, for a fixed number of
    positionals, when all of them are there), otherwise it belongs to NAME."""
    from mosaicdb.store.db import TileDB

    def shift(ctx, param, value):
        db = ctx.params.get("db")
        from_env = ctx.get_parameter_source("db") == click.core.ParameterSource.ENVIRONMENT
        fallback = _env_db(ctx)
        missing = value is None or value == ()
        if fallback and db is not None and not from_env and not TileDB.exists(db) and (nargs == -1 or missing):
            value = param.type_cast_value(ctx, (db, *value) if nargs == -1 else db)
            ctx.params["db"] = fallback
        if required and (value is None or value == ()):
            raise click.MissingParameter(ctx=ctx, param=param)
        return value

    if required:  # shown as required, though click may not insist (the callback does)
        kw.setdefault("metavar", name.upper() + ("..." if nargs == -1 else ""))
    return click.argument(name, nargs=nargs, required=False, callback=shift, **kw)


def _env_db(ctx) -> str | None:
    """$MOSAICDB_DB, as click reads the DB argument's envvar (the CLI never touches os)."""
    return next(p for p in ctx.command.params if p.name == "db").resolve_envvar_value(ctx)


def db_option(f):
    """--db DB (required), which $MOSAICDB_DB may give instead."""
    return click.option("--db", "db_path", type=click.Path(file_okay=False), required=True, envvar=DB_ENV,
                        show_envvar=True, help="Tile database folder.")(f)


def saved_db_option(f):
    """--db for commands on a saved assignment: the database it names wins over $MOSAICDB_DB,
    which is used only when that one is gone (see `given_db`)."""
    return click.option("--db", "db_path", type=click.Path(file_okay=False), default=None, envvar=DB_ENV,
                         show_envvar=True, help="Tile database [default: the one saved in the assignment; "
                                                f"${DB_ENV} if that one is gone].")(f)


def given_db(name: str = "db_path") -> dict:
    """{db: --db as given on the command line, db_fallback: $MOSAICDB_DB} for `saved_db_option`."""
    ctx = click.get_current_context()
    value = ctx.params.get(name)
    if ctx.get_parameter_source(name) == click.core.ParameterSource.ENVIRONMENT:
        return {"db": None, "db_fallback": value}
    return {"db": value, "db_fallback": None}


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text) -> str:
    """`text` with control characters (a file name's terminal escapes, say) shown as \\xNN, and
    bytes of a file name that are not UTF-8 (kept by Python as surrogates) as \\xNN too."""
    text = str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def echo(message="", err: bool = False, nl: bool = True) -> None:
    """click.echo of human-readable text, made printable: names from files and archives may
    carry escape sequences that would rewrite the user's terminal."""
    click.echo(printable(message), err=err, nl=nl)  # the one place text reaches the terminal


def info(quiet: bool, msg: str) -> None:
    """An informational line on stderr, unless -q (on the command or the root group)."""
    if not (quiet or _root_flag("quiet")):
        echo(msg, err=True)


def warn_all(warnings) -> None:
    for w in warnings:
        echo(f"warning: {w}", err=True)


def echo_json(obj) -> None:
    echo(json.dumps(obj, indent=2, default=str))


def setup_logging(verbose: bool) -> None:
    """-v: the library's debug log on stderr; otherwise warnings and errors only (also with -q)."""
    from mosaicdb.progress import lower_level_names
    lower_level_names()
    # without -v, the library's warnings read like the CLI's own ("warning: ..."), not like a log
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s" if verbose else "%(levelname)s: %(message)s")
