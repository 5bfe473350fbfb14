"""`generate_tiles`: palette -> per colour K accepted tiles (with a retry budget) -> ingest with
provenance. A rerun resumes: what each colour already has is read back from the database.

Rounds: each round asks, for every unfinished colour, for exactly as many new attempts as it
still needs (within its budget), so every accepted tile is kept whatever order results arrive
in, and the set of tiles depends only on the options, never on the executor. Attempt numbers
per colour only grow (saved in `<db>/generated/<recipe>.json`), so a resumed run never
repeats a seed.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UsageError, check_int, check_number
from ..io import write_atomic
from ..progress import progress_bar
from .executors import make_executor
from .filters import FilterOptions
from .palette import Palette, palette_from_targets, spread_palette
from .pipeline import PipelineOptions, ResolvedPipeline, check_colour_init, resolve_pipeline
from .prompts import DEFAULT_NEGATIVE, template
from .worker import Job, WorkerSpec, derive_seed

GENERATOR = "mosaicdb.generate"
STATE_DIR = "generated"


@dataclass(frozen=True)
class TileRunOptions:
    """One `generate tiles` run: style or prompt, tiles per palette colour, the palette (from
    targets or spread), image size, seed, batch, negative prompt, colour init, retry budget,
    filters and executor (local or Ray)."""
    style: str
    per_colour: int = 16
    palette_size: int = 64
    palette_from: tuple = ()
    size: int | None = None          # None: the model's native size (SDXL 1024, Turbo 512)
    seed: int = 0
    batch: int = 4
    negative: str | None = None      # None: DEFAULT_NEGATIVE
    colour_init: float = 0.0         # img2img strength from a flat image of the colour; 0 = off
    max_attempts: int | None = None  # per colour; None: 3 x per_colour
    filters: FilterOptions = field(default_factory=FilterOptions)
    executor: str = "local"
    ray_address: str | None = None
    ray_cpus: int | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        template(self.style)
        if not 1 <= self.per_colour <= 100_000:
            raise UsageError(f"--per-colour must be between 1 and 100000, got {self.per_colour}")
        if not 1 <= self.batch <= 1024:
            raise UsageError(f"--batch must be between 1 and 1024, got {self.batch}")
        if self.seed < 0:
            raise UsageError(f"--seed must be >= 0, got {self.seed}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise UsageError(f"--max-attempts must be >= 1, got {self.max_attempts}")
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--workers must be >= 1, got {self.workers}")
        if self.executor != "ray" and (self.ray_address or self.ray_cpus):
            raise UsageError("--ray-address and --ray-cpus need --executor ray")
        if self.size is not None:
            check_int("--size", self.size, 32, 4096)  # 0 is not "the native size": leave it out for that
        check_number("--colour-init", self.colour_init, 0.0, 1.0)

    @property
    def budget(self) -> int:
        return self.max_attempts if self.max_attempts is not None else 3 * self.per_colour

    def to_json(self) -> dict:
        """The options as JSON (in the run record)."""
        d = asdict(self)
        d["palette_from"] = list(self.palette_from)
        return d


@dataclass
class TileRunReport:
    """What a `generate tiles` run did: tiles accepted, duplicates, rejections by reason,
    attempts, colours left short, and timings."""
    recipe: str = ""
    db: str = ""
    colours: int = 0
    per_colour: int = 0
    already_complete: int = 0        # colours that needed nothing at the start (resume)
    accepted: int = 0
    duplicates: int = 0
    rejected: dict = field(default_factory=dict)   # reason -> count
    attempts: int = 0
    rounds: int = 0
    short: list = field(default_factory=list)       # colours that ran out of attempts
    seconds: dict = field(default_factory=dict)     # wall, setup, build (pipelines), generate, filter,
                                                    # encode (summed over workers), ingest, index
    notes: list = field(default_factory=list)
    report_path: str = ""

    @property
    def tiles_per_s(self) -> float:
        w = self.seconds.get("wall", 0.0)
        return self.accepted / w if w > 0 else 0.0

    def summary(self) -> str:
        """The report in one line."""
        rej = ", ".join(f"{v} {k}" for k, v in sorted(self.rejected.items())) or "none"
        s = (f"{self.accepted} tiles added ({self.duplicates} duplicates) for {self.colours} colours x "
             f"{self.per_colour}; {self.already_complete} colours were already complete; "
             f"{self.attempts} attempts, rejected: {rej}; {self.seconds.get('wall', 0):.1f} s "
             f"({self.tiles_per_s:.2f} tiles/s)")
        if self.short:
            s += f"; {len(self.short)} colours ran out of attempts (--max-attempts), e.g. {self.short[0]}"
        return s

    def to_json(self) -> dict:
        """The report as JSON (also in the run record)."""
        return dict(asdict(self), tiles_per_s=round(self.tiles_per_s, 4))


def recipe_id(rp: ResolvedPipeline, tmpl: str, negative: str, size: int, colour_init: float, seed: int) -> str:
    """What makes two runs fill the same pool: a colour counts as done only for its recipe."""
    key = {"model": rp.source, "turbo": rp.turbo, "template": tmpl, "negative": negative, "size": size,
           "steps": rp.steps, "guidance": rp.guidance, "lora": rp.lora, "lora_sha256": rp.lora_sha256,
           "lora_scale": rp.lora_scale, "colour_init": colour_init, "seed": seed, "dtype": rp.dtype}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def existing_counts(db, recipe: str) -> tuple[dict, dict]:
    """Per palette colour (hex) of this recipe: accepted tiles in the database, next attempt."""
    rows = db.con.execute(
        "SELECT json_extract(provenance, '$.palette.hex'), COUNT(*), MAX(json_extract(provenance, '$.attempt')) "
        "FROM tiles WHERE origin = 'generated' AND json_extract(provenance, '$.recipe') = ? GROUP BY 1", (recipe,))
    have, nxt = {}, {}
    for hexcode, n, last in rows:
        have[hexcode] = int(n)
        nxt[hexcode] = int(last) + 1
    return have, nxt


def _state_path(db, recipe: str) -> Path:
    return Path(db.path) / STATE_DIR / f"{recipe}.json"


def _write_json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n"))


def make_palette(ropts: TileRunOptions) -> Palette:
    if ropts.palette_from:
        return palette_from_targets(ropts.palette_from, ropts.palette_size, seed=ropts.seed)
    return spread_palette(ropts.palette_size)


def generate_tiles(db_path, popts: PipelineOptions, ropts: TileRunOptions, *, palette: Palette | None = None,
                   progress: bool = False, create: bool = False, on_note=None) -> TileRunReport:
    """Fill the tile database at `db_path` with K accepted generated tiles per palette colour.
    `create`: make the database (default settings) if the path does not exist, once the model
    and options have been checked. `on_note(str)` hears what is worth telling before the long
    part starts (e.g. that a CPU is slow)."""
    from ..store import TileDB
    t_start = time.perf_counter()
    tmpl = template(ropts.style)
    negative = DEFAULT_NEGATIVE if ropts.negative is None else ropts.negative
    if not create or Path(db_path).exists():
        TileDB.open(db_path).close()  # fail early, before loading anything heavy
    palette = palette if palette is not None else make_palette(ropts)
    rep = TileRunReport(per_colour=ropts.per_colour, colours=len(palette))
    executor = make_executor(ropts.executor, ray_address=ropts.ray_address, ray_cpus=ropts.ray_cpus,
                             workers=ropts.workers)
    try:
        rp = resolve_pipeline(popts, gpus=executor.gpus())
        size = rp.check_size(ropts.size or rp.native_size)
        check_colour_init(rp, ropts.colour_init)
        spec = executor.prepare(WorkerSpec(rp, ropts.filters, size, ropts.colour_init))
        rp = spec.pipeline
        rep.notes = list(rp.notes)
        for note in rep.notes:
            if on_note:
                on_note(note)
        rep.recipe = recipe_id(rp, tmpl, negative, size, ropts.colour_init, ropts.seed)
        if not Path(db_path).exists():
            TileDB.create(db_path).close()
        with TileDB.open(db_path) as db:
            rep.db = str(db.path)
            _run_rounds(db, executor, spec, palette, ropts, tmpl, negative, rep, progress, t_start, popts)
    finally:
        executor.close()
    return rep


def _run_rounds(db, executor, spec, palette, ropts, tmpl, negative, rep, progress, t_start, popts) -> None:
    rp, size = spec.pipeline, spec.size
    state_path = _state_path(db, rep.recipe)
    try:
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    except (OSError, ValueError):
        state = {}   # a damaged run record: the database alone says where to resume
    have, nxt = existing_counts(db, rep.recipe)
    used = {h: max(int(state.get("attempts", {}).get(h, 0)), nxt.get(h, 0)) for h in palette.hex}
    rep.already_complete = sum(have.get(h, 0) >= ropts.per_colour for h in palette.hex)
    rep.seconds = {"setup": time.perf_counter() - t_start, "build": 0.0, "generate": 0.0, "filter": 0.0,
                   "encode": 0.0, "ingest": 0.0, "index": 0.0}
    names = palette.names
    colour_prompts = [tmpl.format(colour=n) for n in names]   # one string per colour, shared by its jobs
    rgbs = [tuple(int(v) for v in c) for c in palette.rgb]
    common = {"generator": GENERATOR, "kind": "tile", "recipe": rep.recipe, "style": ropts.style,
              "template": tmpl, "base_seed": ropts.seed, "width": size, "height": size,
              "model": rp.model, "steps": rp.steps, "guidance": rp.guidance, "colour_init": ropts.colour_init,
              "lora": None if not rp.lora else {"path": rp.lora, "scale": rp.lora_scale, "sha256": rp.lora_sha256},
              "pipeline": rp.provenance()}
    bar = _bar(progress, sum(max(0, ropts.per_colour - have.get(h, 0)) for h in palette.hex))
    try:
        while True:
            jobs = []
            for i, h in enumerate(palette.hex):
                n = max(0, min(ropts.per_colour - have.get(h, 0), ropts.budget - used[h]))
                for a in range(used[h], used[h] + n):
                    jobs.append(Job(i, h, a, derive_seed(ropts.seed, h, a), colour_prompts[i], negative, rgbs[i]))
                used[h] += n
            if not jobs:
                break
            rep.rounds += 1
            rep.attempts += len(jobs)
            batches = [jobs[k:k + ropts.batch] for k in range(0, len(jobs), ropts.batch)]
            _ingest_round(db, executor.run(spec, batches), palette, common, rep, bar)
            have, _ = existing_counts(db, rep.recipe)
            _write_json(state_path, _state(rep, ropts, palette, have, used, popts, rp, spec))
    finally:
        bar.close()
    if rep.accepted:
        t0 = time.perf_counter()
        db.update_index()
        rep.seconds["index"] = time.perf_counter() - t0
    rep.short = [f"{h} ({names[i]}): {have.get(h, 0)} of {ropts.per_colour}"
                 for i, h in enumerate(palette.hex) if have.get(h, 0) < ropts.per_colour]
    rep.seconds["wall"] = time.perf_counter() - t_start
    rep.seconds = {k: round(v, 3) for k, v in rep.seconds.items()}
    rep.report_path = str(state_path)
    _write_json(state_path, _state(rep, ropts, palette, have, used, popts, rp, spec))


def _ingest_round(db, results, palette: Palette, common: dict, rep: TileRunReport, bar) -> None:
    """The single writer: accepted results -> TileDB.add_images, with provenance."""
    waited = 0.0

    def accepted():
        nonlocal waited
        it = iter(results)
        while True:
            t0 = time.perf_counter()
            r = next(it, None)
            waited += time.perf_counter() - t0
            if r is None:
                return
            for k in ("build", "generate", "filter", "encode"):
                rep.seconds[k] += r[f"{k}_s"]
            job = Job.from_json(r["job"])
            if r["reason"]:
                rep.rejected[r["reason"]] = rep.rejected.get(r["reason"], 0) + 1
                bar.set_postfix(rejected=sum(rep.rejected.values()), refresh=False)
                continue
            prov = dict(common, prompt=job.prompt, negative=job.negative, seed=job.seed, attempt=job.attempt,
                        palette=palette.colour(job.colour), filter=r["stats"],
                        batch={"position": r["position"], "members": r["members"]})
            bar.update(1)
            yield r["png"], f"generated:{common['recipe']}:{job.hex}:{job.attempt}", prov

    t0 = time.perf_counter()
    report = db.add_images(accepted(), origin="generated", progress=False, update_index=False)
    rep.seconds["ingest"] += time.perf_counter() - t0 - waited
    rep.accepted += report.added
    rep.duplicates += report.duplicates


def _state(rep, ropts, palette, have, used, popts, rp, spec) -> dict:
    return {"recipe": rep.recipe, "options": ropts.to_json(), "pipeline_options": asdict(popts),
            "pipeline": rp.provenance(), "size": spec.size, "palette": palette.to_json(),
            "attempts": used, "have": {h: have.get(h, 0) for h in palette.hex}, "report": rep.to_json()}


def _bar(enabled: bool, total: int):
    return progress_bar(enabled, total, "generate", unit="tile")
