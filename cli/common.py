"""Shared CLI pieces: the error-mapping root group, option decorators, output helpers."""
from __future__ import annotations

import json
import logging

import click

from mosaicdb.errors import MosaicError


class MosaicGroup(click.Group):
    """Turns library errors into one-line messages and a non-zero exit; never a traceback
    (unless --debug)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except MosaicError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)
        except OSError as e:
            if _debug(ctx):
                raise
            where = f" ({e.filename})" if getattr(e, "filename", None) else ""
            raise click.ClickException(f"{e.strerror or e}{where}") from None
        except Exception as e:  # a bug: still one line, with the way to get details
            if _debug(ctx):
                raise
            raise click.ClickException(f"internal error: {type(e).__name__}: {e} "
                                       "(rerun with `mosaic --debug ...` for the traceback and report it)") from None


def _debug(ctx) -> bool:
    root = ctx.find_root()
    return bool(root.params.get("debug"))


def quiet_option(f):
    return click.option("-q", "--quiet", is_flag=True, help="No progress bars or informational messages.")(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(f)


def db_argument(f):
    return click.argument("db", type=click.Path(file_okay=False, path_type=str))(f)


def info(quiet: bool, msg: str) -> None:
    if not quiet:
        click.echo(msg, err=True)


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
