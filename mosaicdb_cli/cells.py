"""`mosaic generate cells` (a diffusion tile made for each cell) and the hybrid options of
`mosaic make` (`--generate-worst N`)."""
from __future__ import annotations

import click

from .common import echo, echo_json, info, json_option, quiet_option, OutPath
from .generate import _note, _pipeline, pipeline_options


def loop_options(f):
    """The denoising loop's parts (GP: ∫-noise, AdaIN, low-frequency guidance), each switchable."""
    opts = [
        click.option("--noise", default="integral", show_default=True,
                     help="integral (∫-noise: every tile's noise sums to its block of one global field) or "
                          "independent (plain noise per tile)."),
        click.option("--scene-noise/--no-scene-noise", default=True, show_default=True,
                     help="When TARGET came from `mosaic generate scene` (TARGET.json beside it), use its own "
                          "initial noise as the field."),
        click.option("--adain", "--adain-on", "adain", default="x0", show_default=True,
                     help="x0 (AdaIN of each step's x̂0 to the cell's block of the target latent), zt (of the "
                          "noisy latent), or off."),
        click.option("--adain-std-weight", type=float, default=0.5, show_default=True,
                     help="1: the block's spread (a flat block gives a flat tile); 0: keep the tile's own "
                          "(a mean shift only)."),
        click.option("--guidance-weight", type=float, default=5000.0, show_default=True,
                     help="w of the low-frequency guidance, in GP's units at any tile size; 0: off."),
        click.option("--guidance-decay", type=float, default=0.95, show_default=True, help="γ: w shrinks by it each step."),
        click.option("--guidance-decoder", default="vae", show_default=True,
                     help="vae (the model's own), tiny (an AutoencoderTiny folder, --tiny-decoder) or linear "
                          "(a 4->3 least-squares map fitted on the target: free, low frequencies only)."),
        click.option("--tiny-decoder", default=None, type=click.Path(file_okay=False),
                     help="AutoencoderTiny folder for --guidance-decoder tiny (e.g. madebyollin/taesdxl)."),
        click.option("--blur-sigma", type=float, default=None,
                     help="Guidance blur σ in tile px [default: tile latent / block, i.e. one target latent px]."),
        click.option("--guidance-iters", type=int, default=1, show_default=True,
                     help="Gradient steps per denoising step (more for few-step models)."),
        click.option("--grad-through-unet", is_flag=True,
                     help="Backpropagate through the UNet as well (much more memory; default: decoder only)."),
        click.option("--scheduler", default="model", show_default=True,
                     help="model (its own, if supported), euler, euler-ancestral, ddim or lcm."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _cell_options(prompt, negative, grid, size, block, seed, batch, kw):
    from mosaicdb.generate.cellopts import CellOptions
    keys = ("noise", "scene_noise", "adain", "adain_std_weight", "guidance_weight", "guidance_decay",
            "guidance_decoder", "tiny_decoder", "blur_sigma", "guidance_iters", "grad_through_unet", "scheduler")
    return CellOptions(prompt=prompt, negative=negative, grid=grid, size=size, block=block, seed=seed, batch=batch,
                       **{k: kw.pop(k) for k in keys})


@click.command("cells")
@click.argument("target", type=click.Path(dir_okay=False))
@click.option("--prompt", required=True, help='What every tile shows, e.g. "a dog".')
@click.option("--out", "-o", required=True, type=OutPath(dir_okay=False),
              help="The mosaic (.jpg/.png/.webp, .tif pyramid or .dzi); its assignment and metrics go beside it.")
@click.option("--db", "db_path", default=None, type=click.Path(file_okay=False),
              help="Tile database for the generated tiles [default: OUT's name + .tiles.db; created if missing].")
@pipeline_options
@click.option("--grid", default="8", show_default=True, help="Cells across the long side (N) or COLSxROWS.")
@click.option("--size", type=int, default=None, help="Tile side in px [default: the model's native size].")
@click.option("--block", type=int, default=None,
              help="Latent px of the target per cell (AdaIN statistics, ∫-noise field) [default: tile latent / 8, >= 2].")
@click.option("--negative", default=None, help="Negative prompt [default: text, watermark, frame, blur...].")
@click.option("--seed", default=0, show_default=True, help="Seed of the noise field and of every tile.")
@click.option("--batch", default=4, show_default=True, help="Tiles per denoising batch.")
@loop_options
@click.option("--tile-px", type=int, default=None, help="Output px per cell [default: the tile size, at most 256].")
@click.option("--color", default="none", show_default=True, help="Colour transfer at render time (none, mean, meanstd, blend).")
@click.option("--color-strength", type=float, default=0.5, show_default=True, help="How far colour transfer goes (0-1).")
@click.option("--quality", default=90, show_default=True, help="JPEG/WebP quality.")
@json_option
@quiet_option
def cells_cmd(target, prompt, out, db_path, grid, size, block, negative, seed, batch, tile_px, color, color_strength,
              quality, as_json, quiet, **kw):
    """Generate a tile for each cell of TARGET with an SDXL-family model, guided to the cell.

    Our own denoising loop (GP, arXiv 2604.06989): ∫-noise from one seeded field (the scene's
    own noise when TARGET came from `generate scene`), AdaIN of x̂0 to the cell's block of the
    target's latent, and low-frequency guidance (Gaussian-blurred decoded x̂0 against the
    blurred cell). Every tile is ingested with its provenance, so OUT's assignment works with
    render, print and serve. Rerunning resumes: cells already made are not made again.

    Example:

    \b
        mosaic generate cells photo.jpg --model ./sdxl-turbo --grid 8 --prompt "a dog" --out dogs.png
        mosaic generate cells scene.png --model tiny-sdxl --steps 10 --prompt "a dog" --adain off --out a.png
    """
    from mosaicdb.generate.cellrun import generate_cells
    from mosaicdb.render.options import RenderOptions
    copts = _cell_options(prompt, negative, grid, size, block, seed, batch, kw)
    popts = _pipeline(kw)
    render = None
    if tile_px is not None or color != "none":
        render = RenderOptions(tile_px=tile_px or 256, color=color, color_strength=color_strength, quality=quality)
    rep = generate_cells(target, popts, copts, out, db_path=db_path, render=render, progress=not quiet,
                         on_note=_note(quiet))
    if as_json:
        echo_json(rep.to_json())
        return
    echo(rep.summary())
    info(quiet, f"Mosaic {rep.output}; assignment {rep.assignment}; metrics {rep.metrics_path}; tiles in {rep.db}")


# ---- hybrid: `mosaic make ... --generate-worst N` -------------------------------------------------
HYBRID_KEYS = ("generate_worst", "generate_above", "generate_model", "generate_prompt", "generate_negative",
               "generate_steps", "generate_cfg", "generate_device", "generate_guidance_weight", "generate_batch",
               "generate_seed")


def hybrid_options(f):
    opts = [
        click.option("--generate-worst", type=int, default=0,
                     help="Generate tiles (with --generate-model) for the N cells the pool serves worst."),
        click.option("--generate-above", type=float, default=None,
                     help="Also generate for every cell whose distance is above this (RMS Lab)."),
        click.option("--generate-model", default=None, help="SDXL-family model folder for the generated cells."),
        click.option("--generate-prompt", default=None, help="Prompt of the generated cells."),
        click.option("--generate-negative", default=None, help="Negative prompt of the generated cells."),
        click.option("--generate-steps", type=int, default=None, help="Denoising steps [default: the model's]."),
        click.option("--generate-cfg", type=float, default=None, help="Classifier-free guidance [default: the model's]."),
        click.option("--generate-device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps."),
        click.option("--generate-guidance-weight", type=float, default=5000.0, show_default=True,
                     help="Low-frequency guidance weight w of the generated cells."),
        click.option("--generate-batch", type=int, default=4, show_default=True, help="Tiles per denoising batch."),
        click.option("--generate-seed", type=int, default=0, show_default=True, help="Seed of the generated cells."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def hybrid_from_cli(kw: dict):
    """Pops the hybrid options from `kw`; a checked `Hybrid`, or None when not asked for."""
    from mosaicdb.errors import UsageError
    v = {k: kw.pop(k) for k in HYBRID_KEYS}
    if not v["generate_worst"] and v["generate_above"] is None:
        extra = [k for k in ("generate_model", "generate_prompt") if v[k]]
        if extra:
            raise UsageError(f"--{extra[0].replace('_', '-')} needs --generate-worst N or --generate-above DISTANCE")
        return None
    if not v["generate_model"] or not v["generate_prompt"]:
        raise UsageError("--generate-worst/--generate-above need --generate-model DIR and --generate-prompt TEXT")
    from mosaicdb.generate.cellopts import CellOptions
    from mosaicdb.generate.hybrid import Hybrid, HybridOptions
    from mosaicdb.generate.pipeline import PipelineOptions
    popts = PipelineOptions(model=v["generate_model"], device=v["generate_device"], steps=v["generate_steps"],
                            guidance=v["generate_cfg"])
    copts = CellOptions(prompt=v["generate_prompt"], negative=v["generate_negative"],
                        guidance_weight=v["generate_guidance_weight"], batch=v["generate_batch"], seed=v["generate_seed"])
    return Hybrid(HybridOptions(popts, copts, worst=v["generate_worst"], above=v["generate_above"]))
