"""The `mosaic` console script."""
from __future__ import annotations

import click

from mosaicdb import __version__

from .common import MosaicGroup, install_signal_handlers, setup_logging
from .db import db_group
from .demo import demo_cmd
from .generate import generate_group
from .make import eval_cmd, make_cmd, render_cmd
from .plan import plan_cmd
from .print_cmd import print_cmd
from .serve import serve_cmd


@click.group(cls=MosaicGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mosaic")
@click.option("--debug", is_flag=True, help="Show the traceback of system errors (disk, permissions) too.")
@click.option("-v", "--verbose", is_flag=True, help="Log details to stderr.")
def cli(debug, verbose):
    """mosaicdb: photomosaics from a reusable tile database, up to gigapixel prints.

    Example:

    \b
        mosaic db init tiles.db && mosaic db ingest tiles.db ~/Pictures
    """
    setup_logging(verbose)


cli.add_command(db_group)
cli.add_command(make_cmd)
cli.add_command(render_cmd)
cli.add_command(eval_cmd)
cli.add_command(demo_cmd)
cli.add_command(generate_group)
cli.add_command(plan_cmd)
cli.add_command(print_cmd)
cli.add_command(serve_cmd)


def main() -> None:
    install_signal_handlers()
    cli(prog_name="mosaic")
