"""`mosaic generate ...`: SDXL tile pools, scenes, the tiny offline model, regenerating a tile."""
from __future__ import annotations

from pathlib import Path

import click

from .common import echo, after_db, db_argument, echo_json, info, json_option, quiet_option, OutPath


@click.group("generate")
def generate_group():
    """Generate tile pools and target scenes with an SDXL-family model (needs the `gen` extra).

    Example:

    \b
        mosaic generate tiles tiles.db --style flowers --model ./sdxl-turbo --device cuda
    """


def pipeline_options(f):
    """The options every command that builds a pipeline shares."""
    opts = [
        click.option("--model", required=True, help="A diffusers SDXL folder (save_pretrained layout) or a hub id "
                     "such as stabilityai/sdxl-turbo. `mosaic generate tiny-model DIR` writes a tiny offline one."),
        click.option("--device", default="auto", show_default=True, help="auto (a GPU if torch sees one), cpu, cuda, cuda:N or mps."),
        click.option("--dtype", default="auto", show_default=True, help="auto (fp16 on GPU, fp32 on CPU), fp32, fp16 or bf16."),
        click.option("--steps", type=int, default=None, help="Denoising steps [default: 30; SDXL-Turbo 4]."),
        click.option("--guidance", type=float, default=None, help="Classifier-free guidance [default: 7; SDXL-Turbo 0]."),
        click.option("--lora", default=None, help="LoRA weights (.safetensors file or folder) for personalised images."),
        click.option("--lora-scale", default=1.0, show_default=True, help="Strength of the LoRA."),
        click.option("--offload", default="none", show_default=True, help="none, model or sequential: diffusers' CPU offload (GPU with little memory)."),
        click.option("--attention", default="default", show_default=True, help="default (PyTorch SDPA), slicing (less memory) or xformers."),
        click.option("--vae-tiling", is_flag=True, help="Decode the VAE in tiles (less memory for big images)."),
        click.option("--turbo/--no-turbo", default=None, help="Treat the model as SDXL-Turbo (4 steps, guidance 0, 512 px) [default: if its name says turbo]."),
        click.option("--offline", is_flag=True, help="Never contact the Hugging Face hub (use local files and the cache only)."),
        click.option("--threads", type=int, default=0, show_default=True, help="torch CPU threads per worker (0: torch's default; 1 per Ray CPU actor)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _pipeline(kw):
    from mosaicdb.generate import PipelineOptions
    return PipelineOptions(model=kw.pop("model"), device=kw.pop("device"), dtype=kw.pop("dtype"),
                           steps=kw.pop("steps"), guidance=kw.pop("guidance"), lora=kw.pop("lora"),
                           lora_scale=kw.pop("lora_scale"), offload=kw.pop("offload"), attention=kw.pop("attention"),
                           vae_tiling=kw.pop("vae_tiling"), turbo=kw.pop("turbo"), offline=kw.pop("offline"),
                           threads=kw.pop("threads"))


def _note(quiet):
    return lambda msg: info(quiet, f"note: {msg}")


@generate_group.command("tiles")
@db_argument
@click.option("--style", required=True, help="flowers, fish, anime, or a prompt of your own (may place {colour}; "
              "otherwise the colour name is appended).")
@pipeline_options
@click.option("--palette-from", "palette_from", multiple=True, type=click.Path(dir_okay=False, path_type=str),
              help="Target image(s) whose colours the pool should cover (k-means in Lab); repeat for several.")
@click.option("--palette-size", default=64, show_default=True, help="Colours in the palette (k of k-means, or spread over the gamut).")
@click.option("--per-colour", default=16, show_default=True, help="Accepted tiles wanted per palette colour.")
@click.option("--size", type=int, default=None, help="Tile side in px [default: the model's native size; SDXL-Turbo 512].")
@click.option("--negative", default=None, help="Negative prompt [default: text, watermark, frame, blur...].")
@click.option("--batch", default=4, show_default=True, help="Images per pipeline call (16 suits a 24 GB GPU at 512 px).")
@click.option("--seed", default=0, show_default=True, help="Base seed; each tile's seed is derived from it, its colour and attempt.")
@click.option("--colour-init", type=float, default=0.0, show_default=True,
              help="Start each tile from a flat image of its colour (img2img at this strength, e.g. 0.8); 0 = off.")
@click.option("--min-std", type=float, default=6.0, show_default=True, help="Reject tiles flatter than this (Lab std).")
@click.option("--max-std", type=float, default=60.0, show_default=True, help="Reject tiles more varied than this (Lab std).")
@click.option("--max-detail", type=float, default=18.0, show_default=True, help="Reject tiles whose fine detail (Lab std of the finest band) is above this: noise.")
@click.option("--max-delta-e", type=float, default=30.0, show_default=True, help="Reject tiles whose mean colour is further than this from the palette colour.")
@click.option("--max-attempts", type=int, default=None, help="Retry budget per colour [default: 3 x --per-colour].")
@click.option("--executor", default="local", show_default=True, help="local, or ray (Ray Data actor pool; extra `ray`).")
@click.option("--ray-address", default=None, help="Join this Ray cluster (e.g. auto or ray://head:10001) instead of starting one.")
@click.option("--ray-cpus", type=int, default=None, help="CPUs of the local Ray instance [default: all].")
@click.option("--workers", type=int, default=None, help="Ray actors (pipelines) [default: one per GPU, or per CPU on CPUs].")
@json_option
@quiet_option
def tiles_cmd(db, style, palette_from, palette_size, per_colour, size, negative, batch, seed, colour_init, min_std,
              max_std, max_detail, max_delta_e, max_attempts, executor, ray_address, ray_cpus, workers, as_json, quiet,
              **pipe_kw):
    """Generate K tiles per palette colour into the tile database DB (created if missing).

    Each accepted tile is ingested at full resolution with its provenance (model, prompt,
    negative, seed, steps, guidance, palette colour, LoRA). Rerunning resumes: colours that
    already have --per-colour tiles of the same recipe are skipped.

    Example:

    \b
        mosaic generate tiles tiles.db --style flowers --model ./sdxl-turbo --palette-from photo.jpg
    """
    from mosaicdb.generate import FilterOptions, TileRunOptions, generate_tiles
    popts = _pipeline(pipe_kw)
    ropts = TileRunOptions(style=style, per_colour=per_colour, palette_size=palette_size,
                           palette_from=tuple(palette_from), size=size, seed=seed, batch=batch, negative=negative,
                           colour_init=colour_init, max_attempts=max_attempts,
                           filters=FilterOptions(min_std=min_std, max_std=max_std, max_detail=max_detail,
                                                 max_delta_e=max_delta_e),
                           executor=executor, ray_address=ray_address, ray_cpus=ray_cpus, workers=workers)
    existed = Path(db).exists()
    rep = generate_tiles(db, popts, ropts, progress=not quiet, create=True, on_note=_note(quiet))
    if not existed:
        info(quiet, f"Created tile database {db}.")
    if as_json:
        echo_json(rep.to_json())
    else:
        echo(rep.summary())
        info(quiet, f"Run record: {rep.report_path}")


@generate_group.command("scene")
@click.argument("prompt")
@pipeline_options
@click.option("--out", required=True, type=OutPath(dir_okay=False, path_type=str), help="Image to write (.png, .jpg, .webp); its provenance goes to OUT.json.")
@click.option("--width", type=int, default=None, help="Width in px [default: the model's native size].")
@click.option("--height", type=int, default=None, help="Height in px [default: the model's native size].")
@click.option("--negative", default=None, help="Negative prompt [default: text, watermark, frame, blur...].")
@click.option("--seed", default=0, show_default=True, help="Seed of the scene's noise.")
@quiet_option
@json_option
def scene_cmd(prompt, out, width, height, negative, seed, quiet, as_json, **pipe_kw):
    """Generate the macro scene (a mosaic's target) from PROMPT with the same model.

    Example:

    \b
        mosaic generate scene "a lighthouse on a cliff at sunset" --model ./sdxl-turbo --out scene.png
    """
    from mosaicdb.generate import SceneOptions, generate_scene
    prov = generate_scene(_pipeline(pipe_kw), SceneOptions(prompt=prompt, negative=negative, width=width,
                                                           height=height, seed=seed), out, on_note=_note(quiet))
    if as_json:
        echo_json(prov)
        return
    echo(f"Wrote {prov['output']} ({prov['width']}x{prov['height']}) and its provenance {prov['output']}.json.")


@generate_group.command("tiny-model")
@click.argument("folder", type=click.Path(file_okay=False, path_type=str))
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
@click.option("--force", is_flag=True, help="Replace a tiny model already in FOLDER.")
@click.option("--vae", default="random", show_default=True,
              help="random, or colour: an exact colour codec in the VAE's architecture, so `generate cells` "
                   "guidance and AdaIN can change what tiles show (random weights cannot).")
@quiet_option
@json_option
def tiny_model_cmd(folder, seed, force, vae, quiet, as_json):
    """Write a tiny random-weight SDXL pipeline (1.2M parameters, 64 px, seconds on a CPU) to FOLDER.

    Built offline from configs, no download. Its pictures are noise-like, but every generate
    command runs on it: use it to try the commands (with loose filters, since its tiles are
    neither flowers nor on-colour: --max-detail 100 --max-delta-e 200), and in tests.

    Example:

    \b
        mosaic generate tiny-model tiny-sdxl
    """
    from mosaicdb.generate import save_tiny_pipeline
    save_tiny_pipeline(folder, seed=seed, overwrite=force, vae=vae)
    if as_json:
        echo_json({"model": folder, "seed": seed, "vae": vae})
    elif not quiet:
        echo(f"Wrote a tiny SDXL pipeline to {folder} (random weights, {vae} VAE, 64 px images): --model {folder}")


@generate_group.command("reproduce")
@db_argument
@after_db("tile_id", nargs=1, type=int)
@click.option("--out", required=True, type=OutPath(dir_okay=False, path_type=str), help="Image to write (.png recommended).")
@click.option("--model", default=None, help="Where the model is now, if it moved since the tile was made.")
@click.option("--device", default=None, help="Device to regenerate on [default: the one recorded].")
@click.option("--dtype", default=None, help="dtype [default: the one recorded].")
@click.option("--alone", is_flag=True, help="Render the tile by itself instead of with its batch mates (faster; "
              "a few pixels may differ by one level).")
@click.option("--check", is_flag=True, help="Compare with the stored original; exit 1 if any pixel differs.")
@quiet_option
@json_option
def reproduce_cmd(db, tile_id, out, model, device, dtype, alone, check, quiet, as_json):
    """Regenerate generated tile TILE_ID of DB from its provenance.

    Example:

    \b
        mosaic generate reproduce tiles.db 42 --out tile42.png --check
    """
    from mosaicdb.generate.scene import reproduce_tile
    w, h = reproduce_tile(db, tile_id, out, model=model, device=device, dtype=dtype, alone=alone, check=check)
    if as_json:
        echo_json({"output": out, "tile_id": tile_id, "width": w, "height": h, "identical": True if check else None})
        return
    info(quiet, f"Wrote {out} ({w}x{h}).")
    if check:
        echo(f"Identical to tile {tile_id} of {db}.")


from .cells import cells_cmd  # noqa: E402  (it builds on this module's pipeline options)

generate_group.add_command(cells_cmd)
