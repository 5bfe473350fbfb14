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
import signal
import traceback

import click

from mosaicdb.errors import MosaicError, UsageError

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_BUG = 70
EXIT_INTERRUPTED = 130

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
                click.echo(f"Terminated ({signal.Signals(e.signum).name}).", err=True)
                ctx.exit(128 + e.signum)
            click.echo("Interrupted.", err=True)
            ctx.exit(EXIT_INTERRUPTED)

    @staticmethod
    def _map_error(ctx):
        """Called in an `except` block: re-raise the current error as what the user sees."""
        try:
            raise
        except UsageError as e:
            raise OptionError(str(e)) from None
        except MosaicError as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:
            if e.errno not in ENVIRONMENT_ERRNOS:
                _bug(ctx)
            where = f" ({e.filename})" if getattr(e, "filename", None) else ""
            raise click.ClickException(f"{e.strerror or e}{where}") from None
        except MemoryError:
            raise click.ClickException("out of memory: try a smaller --grid, --tile-px or --cache") from None
        except Exception:
            _bug(ctx)


def _bug(ctx) -> None:
    click.echo(traceback.format_exc(), err=True, nl=False)
    click.echo("Error: internal error (a bug in mosaicdb, not in what you asked for); please report it "
               "with the traceback above.", err=True)
    ctx.exit(EXIT_BUG)


def quiet_option(f):
    return click.option("-q", "--quiet", is_flag=True, help="No progress bars or informational messages.")(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(f)


def db_argument(f):
    return click.argument("db", type=click.Path(file_okay=False, path_type=str))(f)


def info(quiet: bool, msg: str) -> None:
    if not quiet:
        click.echo(msg, err=True)


def warn_all(warnings) -> None:
    for w in warnings:
        click.echo(f"warning: {w}", err=True)


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
