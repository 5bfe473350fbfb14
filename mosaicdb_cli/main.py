"""The `mosaic` console script."""
from __future__ import annotations

import importlib
import signal

import click

from mosaicdb import __version__

from .common import EXIT_BROKEN_PIPE, MosaicGroup, install_signal_handlers, quiet_broken_pipe, root_epilog, setup_logging

# command -> (module, attribute): each command's module (and the library stack behind it) is
# imported only when that command runs, so `mosaic serve` starts without the matcher's numba
# or the generator's imports
COMMANDS = {"db": ("db", "db_group"), "make": ("make", "make_cmd"), "render": ("make", "render_cmd"),
            "eval": ("make", "eval_cmd"), "demo": ("demo", "demo_cmd"), "generate": ("generate", "generate_group"),
            "autoencoder": ("autoencoder", "autoencoder_group"),
            "plan": ("plan", "plan_cmd"), "print": ("print_cmd", "print_cmd"), "serve": ("serve", "serve_cmd")}


class LazyGroup(MosaicGroup):
    """The root group, loading each command's module on first use."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name]
        return getattr(importlib.import_module(f".{module}", __package__), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=root_epilog())
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




def main() -> None:
    install_signal_handlers()
    try:
        cli(prog_name="mosaic")
    except BrokenPipeError:  # stdout closed by its reader while click flushed it
        quiet_broken_pipe()
        raise SystemExit(EXIT_BROKEN_PIPE) from None
    finally:
        # The command is over, its message said. A Ctrl-C or SIGTERM while the interpreter exits
        # (multiprocessing's exit hook joins the --jobs workers) now ends it at once, as the
        # signal does by default, instead of printing a KeyboardInterrupt traceback from the hook.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
