"""`mosaic db ...`: create, fill, index, inspect and repair a tile database."""
from __future__ import annotations

import click

from mosaicdb import TileDB
from mosaicdb.errors import DatabaseError, UsageError
from mosaicdb.feature_kinds import DEFAULT_KIND, KINDS
from mosaicdb.index import IndexOptions
from mosaicdb.index.faiss_index import KINDS as INDEX_KINDS
from mosaicdb.index.ivfpq import REFINE_FACTOR
from mosaicdb.store.db import DEFAULT_THUMB_SIZES
from mosaicdb.units import human_bytes, parse_bytes

from .common import echo, after_db, db_argument, echo_json, info, json_option, quiet_option, warn_all


@click.group("db")
def db_group():
    """Build and maintain a tile database (built once, reused for many mosaics).

    Example:

    \b
        mosaic db init tiles.db && mosaic db ingest tiles.db ~/Pictures
    """


def _csv_ints(value: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise UsageError(f"{name} takes comma-separated integers, got {value!r}") from None


@db_group.command("init")
@db_argument
@click.option("--thumb-sizes", default=",".join(map(str, DEFAULT_THUMB_SIZES)), show_default=True,
              help="Square thumbnail sizes kept per tile (consecutive powers of two). Each costs 3*s*s bytes "
                   "per tile: add 128 for pools up to ~100k tiles that render at >= 128 px.")
@click.option("--features", "features", default=DEFAULT_KIND, show_default=True, type=click.Choice(list(KINDS)),
              help="What matching compares: rgb-pyramid = each cell's sRGB block means at 1x1, 2x2, 4x4 and "
                   "8x8 (the cost the fidelity metrics measure); lab-pyramid = the same in CIE Lab; lab-grid = "
                   "the original Lab mean + g x g grid (51-d).")
@click.option("--feature-grid", type=int, default=None, help="lab-grid only: g [default: 4].")
@click.option("--mean-weight", type=float, default=None, help="lab-grid only: weight of the mean colour against the grid [default: 1].")
@click.option("--background", default="255,255,255", show_default=True, help="R,G,B that transparent pixels are composited on.")
@click.option("--max-pixels", default=256_000_000, show_default=True, help="Images with more pixels are refused (decompression bombs).")
@quiet_option
@json_option
def init_cmd(db, thumb_sizes, features, feature_grid, mean_weight, background, max_pixels, quiet, as_json):
    """Create an empty tile database folder DB.

    Example:

    \b
        mosaic db init tiles.db --thumb-sizes 8,16,32,64,128
    """
    with TileDB.create(db, thumb_sizes=_csv_ints(thumb_sizes, "--thumb-sizes"), features=features,
                       feature_grid=feature_grid, mean_weight=mean_weight,
                       background=_csv_ints(background, "--background"), max_pixels=max_pixels) as d:
        made = {"path": str(d.path), "thumb_sizes": list(d.thumb_sizes), "features": d.feature_spec.kind,
                "feature_dim": d.dim}
    if as_json:
        echo_json(made)
    elif not quiet:
        echo(f"Created tile database {db} (thumbnails {','.join(map(str, made['thumb_sizes']))} px, "
             f"{made['features']} features, {made['feature_dim']}-dim).")


@db_group.command("ingest")
@db_argument
@after_db("sources", type=click.Path(path_type=str))
@click.option("--link", is_flag=True, help="Reference files where they are instead of copying them (archive members are always copied).")
@click.option("--workers", type=int, default=None, help="Decoding processes [default: CPU count].")
@click.option("--no-index", is_flag=True, help="Don't build or update the vector index afterwards.")
@quiet_option
@json_option
def ingest_cmd(db, sources, link, workers, no_index, quiet, as_json):
    """Add every image under SOURCES (files, folders, zip and tar archives) to DB.

    Unreadable, corrupt or non-image inputs are skipped and listed by `mosaic db errors`.
    Running the same ingest again adds nothing and is fast; an interrupted one resumes.
    With $MOSAICDB_DB set, DB may be left out.

    Example:

    \b
        mosaic db ingest tiles.db ~/Pictures/holiday photos.zip
    """
    with TileDB.open(db) as d:
        report = d.ingest(sources, link=link, workers=workers, progress=not quiet, update_index=not no_index)
    if as_json:
        echo_json({"db": db, **report.to_json()})
    else:
        echo(report.summary())


@db_group.command("index")
@db_argument
@click.option("--kind", type=click.Choice(list(INDEX_KINDS)), default="auto", show_default=True,
              help="auto: exact search up to --flat-max tiles, then ivf16 (IVF of half floats behind a "
                   "32-dim PCA) while IVF-Flat would fit --ivf-ram-max, IVF-PQ (compressed codes, refined by "
                   "exact distances) beyond. ivf: IVF of the features' own PCA in float32 (more of the exact "
                   "nearest among the candidates, ~1.35x slower at 1M tiles).")
@click.option("--flat-max", default=20_000, show_default=True, help="Largest pool searched exactly with kind auto.")
@click.option("--ivf-ram-max", default="1G", show_default=True,
              help="With kind auto, IVF-PQ once an IVF-Flat index would hold more than this (vectors + ids).")
@click.option("--nlist", default=0, help="IVF lists [default: ~4*sqrt(tiles); ivfpq: at most 4096].")
@click.option("--nprobe", default=0, help="IVF lists probed per query [default: tuned to --target-recall].")
@click.option("--pq-m", default=0, help="ivfpq: bytes of code per vector, a divisor of the index's dims [default: dims/2].")
@click.option("--refine-factor", default=0,
              help=f"ivfpq: candidates re-ranked by exact distance per result wanted [default: {REFINE_FACTOR}].")
@click.option("--target-recall", default=0.99, show_default=True, help="recall@1 against exact search that nprobe tuning aims for.")
@click.option("--rebuild", is_flag=True, help="Build from scratch even if an up-to-date index exists.")
@quiet_option
@json_option
def index_cmd(db, kind, flat_max, ivf_ram_max, nlist, nprobe, pq_m, refine_factor, target_recall, rebuild, quiet,
              as_json):
    """Build or update the FAISS index of DB and measure its recall. Without --kind an
    existing index is brought up to date (--rebuild: built anew) as the kind it was last
    built with, which the catalog records, so a lost or damaged index comes back as that
    kind; any --kind given, auto included, builds one of that kind.

    Example:

    \b
        mosaic db index tiles.db --target-recall 0.995
    """
    opts = IndexOptions(kind=kind, flat_max=flat_max, ivf_ram_max=parse_bytes(ivf_ram_max, "--ivf-ram-max"),
                        nlist=nlist, nprobe=nprobe, pq_m=pq_m, refine_factor=refine_factor, target_recall=target_recall)
    # any --kind given builds that kind, auto too (without it, the saved index is brought up to date)
    given = click.get_current_context().get_parameter_source("kind") == click.core.ParameterSource.COMMANDLINE
    with TileDB.open(db) as d:
        infos = d.index(opts, rebuild=rebuild or given, keep_kind=not given)
    if as_json:
        echo_json(infos)
    else:
        p = ", ".join(f"{k}={v}" for k, v in infos["params"].items())
        ram = f", {human_bytes(infos['ram_bytes'])} in RAM" if "ram_bytes" in infos else ""
        echo(f"Index: {infos['kind']}{' (' + p + ')' if p else ''}, {infos['ntotal']} vectors{ram}, "
                   f"recall@1 {infos['recall_at_1']:.3f}, built in {infos['build_seconds']:.2f} s.")


@db_group.command("reindex")
@db_argument
@click.option("--features", "features", required=True, type=click.Choice(list(KINDS)),
              help="The feature kind to compute (see `mosaic db init --help`).")
@click.option("--feature-grid", type=int, default=None, help="lab-grid only: g [default: 4].")
@click.option("--mean-weight", type=float, default=None, help="lab-grid only: weight of the mean colour [default: 1].")
@quiet_option
@json_option
def reindex_cmd(db, features, feature_grid, mean_weight, quiet, as_json):
    """Recompute the features of every tile of DB as another kind, from the stored thumbnails
    (no re-ingest), then rebuild the index.

    Safe to interrupt: until it finishes, DB keeps its old features; run it again to finish.

    Example:

    \b
        mosaic db reindex tiles.db --features rgb-pyramid
    """
    from mosaicdb.store.reindex import reindex
    with TileDB.open(db) as d:
        report = reindex(d, features, grid=feature_grid, mean_weight=mean_weight, progress=not quiet)
    if as_json:
        echo_json({"db": db, **report.to_json()})
    else:
        echo(report.summary())


@db_group.command("stats")
@db_argument
@quiet_option
@json_option
def stats_cmd(db, quiet, as_json):
    """Show what DB holds: tiles, skipped inputs, disk use, index.

    Example:

    \b
        mosaic db stats tiles.db --json
    """
    with TileDB.open(db, readonly=True) as d:
        s = d.stats()
    if as_json:
        echo_json(s)
        return
    mb = {k: v / 1e6 for k, v in s["bytes"].items()}
    echo(f"{s['path']}: {s['tiles']} tiles ({', '.join(f'{v} {k}' for k, v in s['by_origin'].items()) or 'none'}), "
               f"{s['skipped_inputs']} skipped inputs")
    echo(f"  thumbnails {s['thumb_sizes']} px, features {s['features']['kind']} ({s['feature_dim']}-dim)")
    echo("  disk: " + ", ".join(f"{k} {v:.1f} MB" for k, v in mb.items()))
    ix = s["index"]
    echo("  index: none (built by `mosaic db index` or the next `mosaic make`)" if ix is None else
         f"  index: {ix['kind']} {ix['params']}{', PCA to ' + str(ix['pca_dims']) + ' dims' if ix['pca_dims'] else ''}, "
         f"{ix['ntotal']} vectors, recall@1 {ix['recall_at_1']:.3f}"
               f"{', OUT OF DATE' if ix['stale'] else ''}")


@db_group.command("check")
@db_argument
@click.option("--deep", is_flag=True, help="Also re-hash every original and recompute a sample of features.")
@quiet_option
@json_option
def check_cmd(db, deep, quiet, as_json):
    """Check that catalog, originals, features, thumbnails and index agree.

    Exits 1 when something is wrong; warnings (stale index, orphan files) don't fail.
    The quick check recomputes 32 sampled tiles' features from their thumbnails (features
    computed with other settings than the catalog's all disagree); --deep also verifies
    every row's checksum, 5,000 tiles' features and every original's hash.

    Example:

    \b
        mosaic db check tiles.db --deep
    """
    with TileDB.open(db, readonly=True) as d:
        rep = d.check(deep=deep)
    if as_json:
        echo_json({"db": db, **rep.to_json()})
        if not rep.ok:
            raise click.ClickException(f"{db}: {len(rep.problems)} problem(s) found")
        return
    for w in rep.warnings:
        echo(f"warning: {w}", err=True)
    for p in rep.problems:
        echo(f"problem: {p}", err=True)
    if not rep.ok:
        raise click.ClickException(f"{db}: {len(rep.problems)} problem(s) found")
    echo(f"{db}: OK ({rep.tiles} tiles)")


@db_group.command("repair")
@db_argument
@click.option("--remove-unrecoverable", is_flag=True,
              help="Remove the tiles whose originals are missing or changed (they cannot be rebuilt).")
@click.option("--workers", type=int, default=None, help="Decoding processes [default: CPU count].")
@quiet_option
@json_option
def repair_cmd(db, remove_unrecoverable, workers, quiet, as_json):
    """Rebuild what a damaged DB lost: array rows from the originals, checksums, the index.

    Reports the tiles that cannot be rebuilt (original missing or changed) and exits 1 while
    any remain (--remove-unrecoverable removes them).

    Example:

    \b
        mosaic db repair tiles.db
    """
    with TileDB.open(db) as d:
        rep = d.repair(remove_unrecoverable=remove_unrecoverable, workers=workers or 1,
                       progress=not quiet and not as_json)
    if as_json:
        echo_json(rep.to_json())
    else:
        echo(f"{db}: {rep.summary()}")
        for tid, why in rep.unrecoverable[:20]:
            echo(f"  tile {tid}: {why}", err=True)
    if not rep.ok:
        raise DatabaseError(f"{db}: {len(rep.unrecoverable)} tile(s) cannot be rebuilt; they are never drawn: "
                            "restore their originals and repair again, or rerun with --remove-unrecoverable")


@db_group.command("errors")
@db_argument
@quiet_option
@json_option
def errors_cmd(db, quiet, as_json):
    """List inputs that were skipped and why.

    Example:

    \b
        mosaic db errors tiles.db
    """
    with TileDB.open(db, readonly=True) as d:
        errs = d.errors()
    if as_json:
        echo_json(errs)
        return
    for e in errs:
        echo(f"{e['source']}: {e['reason']}")
    info(quiet, f"{len(errs)} skipped input(s)")


@db_group.command("remove")
@db_argument
@after_db("tiles", required=False)
@click.option("--source", "source_prefix", help="Remove every tile ingested from this file or folder.")
@quiet_option
@json_option
def remove_cmd(db, tiles, source_prefix, quiet, as_json):
    """Remove tiles from DB by id, by hash prefix (>= 8 hex digits) or by --source.
    A number that is both a tile's id and the start of another tile's hash is refused:
    write id:N or hash:PREFIX.

    Example:

    \b
        mosaic db remove tiles.db 12 40 3fa9c2d1 --source ~/Pictures/blurry
        mosaic db remove tiles.db hash:05270200
    """
    if not tiles and not source_prefix:
        raise UsageError("name tiles to remove (ids or hash prefixes) or give --source PATH")
    with TileDB.open(db) as d:
        n = d.remove(d.resolve_refs(tiles, source_prefix))
    if n == 0:
        warn_all([f"no tile of {db} matches {' '.join(tiles) or source_prefix}: nothing removed"])
    if as_json:
        echo_json({"db": db, "removed": n})
    else:
        echo(f"Removed {n} tile(s) from {db}.")
