"""The `mosaic` console script."""
from __future__ import annotations

import click

from mosaicdb import __version__

from .autoencoder import autoencoder_group
from .common import EXIT_BROKEN_PIPE, MosaicGroup, install_signal_handlers, quiet_broken_pipe, root_epilog, setup_logging
from .db import db_group
from .demo import demo_cmd
from .generate import generate_group
from .make import eval_cmd, make_cmd, render_cmd
from .plan import plan_cmd
from .print_cmd import print_cmd
from .serve import serve_cmd


@click.group(cls=MosaicGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=root_epilog())
@click.version_option(__version__, prog_name="mosaic")
@click.option("--debug", is_flag=True, help="Show the traceback of system errors (disk, permissions) too.")
@click.option("-v", "--verbose", is_flag=True, help="Log details (the library's debug log) to stderr.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or informational messages, for any command.")
def cli(debug, verbose, quiet):
    """mosaicdb: photomosaics from a reusable tile database, up to gigapixel prints.

    Every command has --help with an example; commands that report something take --json.

    Example:

    \b
        mosaic db init tiles.db && mosaic db ingest tiles.db ~/Pictures
        mosaic -q make --db tiles.db photo.jpg --out mosaic.jpg
    """
    setup_logging(verbose)


cli.add_command(db_group)
cli.add_command(make_cmd)
cli.add_command(render_cmd)
cli.add_command(eval_cmd)
cli.add_command(demo_cmd)
cli.add_command(generate_group)
cli.add_command(autoencoder_group)
cli.add_command(plan_cmd)
cli.add_command(print_cmd)
cli.add_command(serve_cmd)


def main() -> None:
    install_signal_handlers()
    try:
        cli(prog_name="mosaic")
    except BrokenPipeError:  # stdout closed by its reader while click flushed it
        quiet_broken_pipe()
        raise SystemExit(EXIT_BROKEN_PIPE) from None
