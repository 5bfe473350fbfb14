"""`mosaic autoencoder ...`: train a tile autoencoder on a database, inspect a model; and the
`--autoencoder` options `mosaic make` takes."""
from __future__ import annotations

import click

from .common import db_argument, echo, echo_json, info, json_option, quiet_option, OutPath


@click.group("autoencoder")
def autoencoder_group():
    """Autoencoder tiles: a small model trained on a pool decodes a tile for every cell (needs the `gen` extra).

    Example:

    \b
        mosaic autoencoder train tiles.db --latent 32 --size 32 --steps 3000 --out cifar-ae
        mosaic make --db tiles.db photo.jpg --autoencoder cifar-ae --out mosaic.jpg --grid 64
    """


@autoencoder_group.command("train")
@db_argument
@click.option("--out", "-o", required=True, type=OutPath(), help="Model folder to write (config.json, model.safetensors, checkpoint).")
@click.option("--latent", default=32, show_default=True, help="Code dimensions (each in (0, 1)).")
@click.option("--size", default=32, show_default=True, help="Tile side in px: 8, 16, 32 or 64 (from the database's thumbnails).")
@click.option("--width", default=8, show_default=True, help="Channels at full resolution (doubling at each 2x reduction).")
@click.option("--steps", default=3000, show_default=True, help="Training steps (batches).")
@click.option("--batch", default=128, show_default=True, help="Tiles per step.")
@click.option("--lr", default=2e-3, show_default=True, help="Adam learning rate (decays linearly to 0 over the last 40%).")
@click.option("--noise", default=0.05, show_default=True, help="Std of the Gaussian noise added to the code while training.")
@click.option("--seed", default=0, show_default=True, help="Seed of the initial weights, batches and noise.")
@click.option("--threads", default=1, show_default=True,
              help="torch CPU threads (0: all CPUs); part of the run's identity. More than 1 helps only on idle cores.")
@click.option("--max-tiles", default=100_000, show_default=True, help="Training tiles held in memory (a seeded sample beyond).")
@click.option("--atlas-size", default=2048, show_default=True, help="Codes decoded once per model for each cell's first guess.")
@click.option("--checkpoint-every", default=100, show_default=True, help="Save the training state every N steps.")
@click.option("--restart", is_flag=True, help="Ignore a checkpoint in --out and train from scratch.")
@quiet_option
@json_option
def train_cmd(db, out, latent, size, width, steps, batch, lr, noise, seed, threads, max_tiles, atlas_size,
              checkpoint_every, restart, quiet, as_json):
    """Train an autoencoder on the thumbnails of the tile database DB.

    Deterministic for a seed and thread count; rerunning the same command after an interruption
    resumes from the last checkpoint, and after completion does nothing. Reports the
    reconstruction MSE against decoding random codes, on held-out tiles.

    Example:

    \b
        mosaic autoencoder train tiles.db --latent 32 --size 32 --steps 3000 --out cifar-ae
    """
    from mosaicdb import TileDB
    from mosaicdb.autoencoder import Arch, TrainOptions
    from mosaicdb.autoencoder.train import train_autoencoder
    opts = TrainOptions(Arch(latent=latent, size=size, width=width), steps=steps, batch=batch, lr=lr, noise=noise,
                        seed=seed, threads=threads, max_tiles=max_tiles, atlas_size=atlas_size,
                        checkpoint_every=checkpoint_every)
    with TileDB.open(db, readonly=True) as tdb:
        rep = train_autoencoder(tdb, out, opts, progress=not quiet, restart=restart)
    if as_json:
        echo_json({"out": rep.out, "steps": rep.steps, "resumed_from": rep.resumed_from,
                   "already_done": rep.already_done, "tiles": rep.tiles, "val_tiles": rep.val_tiles,
                   "metrics": rep.metrics, "seconds": rep.seconds, "sha256": rep.sha256})
        return
    info(quiet, rep.summary())
    echo(rep.out)


@autoencoder_group.command("info")
@click.argument("model", type=click.Path())
@json_option
def info_cmd(model, as_json):
    """Check the model folder MODEL and show its architecture, training and metrics.

    Example:

    \b
        mosaic autoencoder info cifar-ae
    """
    from mosaicdb.autoencoder.files import load_model
    m = load_model(model)
    c = m.config
    doc = {"path": str(m.path), "sha256": m.sha256, "arch": m.arch.to_json(), "atlas_size": int(len(m.atlas)),
           "training": c.get("training"), "data": c.get("data"), "metrics": c.get("metrics"),
           "seconds": c.get("seconds"), "steps_done": c.get("steps_done")}
    if as_json:
        echo_json(doc)
        return
    a, mt = m.arch, c.get("metrics") or {}
    echo(f"{m.path}: latent {a.latent}, {a.size} px, width {a.width}, atlas {doc['atlas_size']} codes, "
               f"{doc['steps_done']} steps on {(c.get('data') or {}).get('tiles')} tiles of {(c.get('data') or {}).get('db')}")
    if mt:
        echo(f"reconstruction MSE {mt['mse_encoder']:.5f}, random codes {mt['mse_random_code']:.5f} "
                   f"(ratio {mt['ratio']:.3f})")
    echo(f"sha256 {m.sha256}")


# ---- mosaic make --autoencoder ------------------------------------------------------------------
def autoencoder_make_options(f):
    """The options `mosaic make` takes for tiles decoded by an autoencoder."""
    opts = [
        click.option("--autoencoder", "ae_model", default=None, type=click.Path(),
                     help="Decode each cell's tile with this model (from `mosaic autoencoder train`) instead of retrieving it."),
        click.option("--hybrid", "ae_hybrid", is_flag=True, default=False,
                     help="With --autoencoder: per cell, the closer of the decoded tile and the retrieved one."),
        click.option("--ae-db", "ae_db", default=None, type=click.Path(file_okay=False),
                     help="Tile database for decoded tiles [default: MODEL-NAME.tiles.db beside --out]; --db is never written."),
        click.option("--ae-steps", "ae_steps", default=1, show_default=True, help="Adam steps refining each cell's code (more: closer tiles, slower)."),
        click.option("--ae-color-fit/--no-ae-color-fit", "ae_color_fit", default=True, show_default=True,
                     help="Per-cell least-squares colour fit of each decoded tile."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def split_autoencoder_options(kw: dict) -> tuple[dict, dict]:
    """(the --autoencoder options, the rest) of a command's keyword arguments."""
    ae = {k: kw[k] for k in ("ae_model", "ae_hybrid", "ae_db", "ae_steps", "ae_color_fit")}
    return ae, {k: v for k, v in kw.items() if k not in ae}


def auto_options(ae_model, ae_hybrid, ae_db, ae_steps, ae_color_fit):
    """AutoOptions from the make options, or None without --autoencoder."""
    from mosaicdb.errors import UsageError
    if ae_model is None:
        if ae_hybrid or ae_db:
            raise UsageError("--hybrid and --ae-db need --autoencoder MODEL")
        return None
    from mosaicdb.autoencoder import AutoOptions
    return AutoOptions(model=ae_model, steps=ae_steps, hybrid=ae_hybrid, ae_db=ae_db, color_fit=ae_color_fit)


def autoencoder_summary(a: dict) -> str:
    """One line on what --autoencoder did for a mosaic."""
    s = (f"autoencoder: {a['cells_decoded']} cells decoded ({a['tiles_added']} new tiles, {a['tiles_shared']} shared "
         f"with earlier ones), MSE {a['mse']['encoder']:.5f} encoder -> {a['mse']['final']:.5f} fitted, "
         f"{a['fit_cells_per_s'] or 0:.0f} cells/s")
    if a["cells_retrieved"]:
        s += f"; {a['cells_retrieved']} cells kept their retrieved tile ({a['retrieved_copied']} copied)"
    return s + f"; tiles in {a['ae_db']}"
