"""End to end with the tiny offline SDXL pipeline (no hub, no GPU): palette -> generation ->
filter -> ingest with provenance, resume, exact regeneration from provenance, colour init,
LoRA, scenes, and the `mosaic generate` commands."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from clirun import invoke_cli
from PIL import Image

pytest.importorskip("torch", reason="generation tests need torch: pip install torch==2.13.0 then 'mosaicdb[gen]'")
pytest.importorskip("diffusers", reason="generation tests need diffusers: pip install 'mosaicdb[gen]'")
pytest.importorskip("transformers", reason="generation tests need transformers: pip install 'mosaicdb[gen]'")

from mosaicdb import TileDB  # noqa: E402
from mosaicdb.errors import DeviceError, UsageError  # noqa: E402
from mosaicdb.generate import (FilterOptions, Palette, PipelineOptions, SceneOptions, TileRunOptions,  # noqa: E402
                               generate_scene, generate_tiles, regenerate, save_tiny_pipeline)
from mosaicdb.generate.filters import tile_stats  # noqa: E402
from mosaicdb.generate.pipeline import Generator, resolve_pipeline  # noqa: E402

STEPS = 2
# diffusers' Euler scheduler calls np.array(tensor, copy=False) on numpy 2: its problem, not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
LOOSE = FilterOptions(max_detail=100, max_delta_e=1000)   # the tiny model's tiles are noise-like


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "tiny-sdxl")


def popts(tiny, **kw) -> PipelineOptions:
    return PipelineOptions(str(tiny), steps=STEPS, guidance=5.0, threads=1, **kw)


@pytest.fixture(scope="session")
def tiny_colour(tiny) -> np.ndarray:
    """The mean colour the (untrained) tiny model paints whatever the prompt: a palette colour
    near it is reachable, one far from it (blue) is not."""
    g = Generator(resolve_pipeline(popts(tiny)))
    px = g(["probe"] * 2, [""] * 2, [11, 12], width=64, height=64)
    return np.rint(px.reshape(-1, 3).mean(0)).astype(np.uint8)


def two_colour_palette(tiny_colour) -> Palette:
    return Palette(np.array([tiny_colour, (20, 40, 200)], np.uint8), np.array([0.5, 0.5]), "test")


def tiles_by_key(db_path) -> dict:
    with TileDB.open(db_path, readonly=True) as db:
        return {(r["provenance"]["palette"]["hex"], r["provenance"]["attempt"]): r for r in db.tiles(db.ids())}


def test_tiny_model_round_trips_and_is_deterministic(tiny):
    assert (tiny / "model_index.json").is_file() and (tiny / "mosaicdb-tiny.json").is_file()
    rp = resolve_pipeline(popts(tiny))
    assert (rp.native_size, rp.vae_scale, rp.device, rp.dtype, rp.turbo) == (64, 8, "cpu", "fp32", False)
    assert any("CPU" in n for n in rp.notes)
    g = Generator(rp)
    a = g(["red flowers", "blue fish"], ["", ""], [1, 2], width=64, height=64)
    b = g(["red flowers", "blue fish"], ["", ""], [1, 2], width=64, height=64)
    c = g(["red flowers", "blue fish"], ["", ""], [1, 3], width=64, height=64)
    assert a.shape == (2, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)                    # same seeds, same batch: same pixels
    assert np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])   # noise is per image


def test_generate_filter_ingest_resume(tiny, tiny_colour, tmp_path):
    db = tmp_path / "tiles.db"
    TileDB.create(db).close()
    pal = two_colour_palette(tiny_colour)
    ropts = TileRunOptions(style="flowers", per_colour=3, batch=4, seed=5, max_attempts=3,
                           filters=FilterOptions(max_detail=100, max_delta_e=20))
    rep = generate_tiles(db, popts(tiny), ropts, palette=pal)
    # the reachable colour got its 3 tiles; blue used its budget of 3 attempts and is short
    assert rep.accepted == 3 and rep.attempts == 6 and rep.rejected == {"off-colour": 3}
    assert rep.rounds == 1 and len(rep.short) == 1 and rep.short[0].startswith("#1428c8")
    tiles = tiles_by_key(db)
    near = pal.hex[0]
    assert sorted(tiles) == [(near, 0), (near, 1), (near, 2)]
    for (hexcode, attempt), t in tiles.items():
        p = t["provenance"]
        assert t["origin"] == "generated" and (t["width"], t["height"]) == (64, 64)   # full resolution
        assert p["model"] == str(tiny) and p["steps"] == STEPS and p["guidance"] == 5.0 and p["lora"] is None
        assert p["palette"]["hex"] == hexcode and p["palette"]["name"] in p["prompt"]
        assert "flowers" in p["prompt"] and p["negative"].startswith("text, watermark")
        assert p["seed"] == __import__("mosaicdb.generate.worker", fromlist=["x"]).derive_seed(5, hexcode, attempt)
        assert p["filter"]["delta_e"] <= 20 and p["pipeline"]["versions"]["torch"]
    with TileDB.open(db, readonly=True) as d:
        assert not d.index_stale() and d.check().ok
    state = json.loads(Path(rep.report_path).read_text())
    assert state["attempts"] == {near: 3, pal.hex[1]: 3} and state["have"] == {near: 3, pal.hex[1]: 0}

    # rerun: the finished colour is skipped and the short one has no budget left: nothing to do
    again = generate_tiles(db, popts(tiny), ropts, palette=pal)
    assert (again.attempts, again.accepted, again.already_complete) == (0, 0, 1)
    # more tiles per colour: only the new ones are made, with new attempts (never a repeated seed)
    more = generate_tiles(db, popts(tiny), TileRunOptions(**{**ropts.__dict__, "per_colour": 5, "max_attempts": 6}),
                          palette=pal)
    assert more.accepted == 2 and more.attempts == 2 + 3
    after = tiles_by_key(db)
    assert sorted(k for k in after if k[0] == near) == [(near, a) for a in range(5)]
    assert all(after[k]["hash"] == tiles[k]["hash"] for k in tiles)


def test_same_seed_reproduces_the_same_pixels(tiny, tmp_path):
    db = tmp_path / "tiles.db"
    TileDB.create(db).close()
    rep = generate_tiles(db, popts(tiny), TileRunOptions(style="fish", per_colour=2, palette_size=2, batch=3,
                                                         filters=LOOSE), palette=None)
    assert rep.accepted == 4
    with TileDB.open(db, readonly=True) as d:
        rows = d.tiles(d.ids())
        originals = {r["id"]: np.asarray(d.load_original(r["id"])) for r in rows}
    r = rows[1]
    assert r["provenance"]["batch"]["members"][r["provenance"]["batch"]["position"]] == \
        f"{r['provenance']['palette']['hex']}:{r['provenance']['attempt']}"
    exact = regenerate(r["provenance"])
    assert np.array_equal(exact, originals[r["id"]])
    alone = regenerate(r["provenance"], exact_batch=False)   # without its batch mates: equal up to rounding
    diff = np.abs(alone.astype(int) - originals[r["id"]])
    assert diff.max() <= 2 and diff.mean() < 0.05
    # a second database with the same options holds the very same tiles
    db2 = tmp_path / "again.db"
    TileDB.create(db2).close()
    generate_tiles(db2, popts(tiny), TileRunOptions(style="fish", per_colour=2, palette_size=2, batch=3, filters=LOOSE))
    assert {k: v["hash"] for k, v in tiles_by_key(db2).items()} == {k: v["hash"] for k, v in tiles_by_key(db).items()}


def test_colour_init_and_lora_change_the_pixels_and_are_recorded(tiny, tmp_path):
    peft = pytest.importorskip("peft", reason="--lora needs peft (in the gen extra)")
    import torch
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny)
    torch.manual_seed(0)
    pipe.unet.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                          init_lora_weights=False))
    lora = tmp_path / "lora"
    StableDiffusionXLPipeline.save_lora_weights(
        lora, unet_lora_layers=convert_state_dict_to_diffusers(peft.utils.get_peft_model_state_dict(pipe.unet)))

    runs = {}
    for name, kw, ckw in [("plain", {}, {}), ("init", {}, {"colour_init": 0.5}), ("lora", {"lora": str(lora)}, {})]:
        db = tmp_path / f"{name}.db"
        TileDB.create(db).close()
        generate_tiles(db, popts(tiny, **kw), TileRunOptions(style="anime", per_colour=1, palette_size=2, batch=2,
                                                             filters=LOOSE, **ckw))
        runs[name] = tiles_by_key(db)
    assert runs["plain"].keys() == runs["init"].keys() == runs["lora"].keys()
    for k in runs["plain"]:
        assert runs["plain"][k]["hash"] != runs["init"][k]["hash"] != runs["lora"][k]["hash"]
        assert runs["init"][k]["provenance"]["colour_init"] == 0.5
        lp = runs["lora"][k]["provenance"]["lora"]
        assert lp["path"] == str(lora.resolve()) and len(lp["sha256"]) == 64 and lp["scale"] == 1.0
        assert runs["plain"][k]["provenance"]["recipe"] != runs["lora"][k]["provenance"]["recipe"]
    # regeneration replays the img2img start and the LoRA too
    for name in ("init", "lora"):
        row = next(iter(runs[name].values()))
        with TileDB.open(tmp_path / f"{name}.db", readonly=True) as d:
            assert np.array_equal(regenerate(row["provenance"]), np.asarray(d.load_original(row["id"])))


def test_scene(tiny, tmp_path):
    out = tmp_path / "scene.png"
    prov = generate_scene(popts(tiny), SceneOptions("a lighthouse at dusk", width=96, height=64, seed=3), out)
    img = np.asarray(Image.open(out))
    assert img.shape == (64, 96, 3)
    side = json.loads(Path(str(out) + ".json").read_text())
    assert side["prompt"] == "a lighthouse at dusk" and side["seed"] == 3 and side["kind"] == "scene"
    assert np.array_equal(regenerate(prov), img)
    with pytest.raises(UsageError, match="multiple of 8"):
        generate_scene(popts(tiny), SceneOptions("x", width=100), tmp_path / "bad.png")
    with pytest.raises(UsageError, match="suffix"):
        generate_scene(popts(tiny), SceneOptions("x"), tmp_path / "bad.gif")


@pytest.mark.parametrize("kw, match", [
    ({"device": "cuda"}, "no CUDA GPU is visible"),
    ({"dtype": "fp16"}, "fp16 needs a GPU"),
    ({"offload": "model"}, "needs --device cuda"),
    ({"dtype": "fp8"}, "unknown --dtype 'fp8': choose one of auto, bf16, fp16, fp32"),
    ({"device": "tpu"}, "unknown --device"),
])
def test_pipeline_options_fail_in_one_line(tiny, kw, match):
    import torch
    if torch.cuda.is_available() and kw.get("device") == "cuda":
        pytest.skip("a GPU is visible here")
    with pytest.raises(DeviceError if kw.get("device") == "cuda" else UsageError, match=match) as e:
        resolve_pipeline(PipelineOptions(str(tiny), **kw))
    assert "\n" not in str(e.value)


def test_size_and_colour_init_are_checked(tiny, tmp_path):
    db = tmp_path / "t.db"
    TileDB.create(db).close()
    with pytest.raises(UsageError, match="--size must be a multiple of 8"):
        generate_tiles(db, popts(tiny), TileRunOptions(style="fish", size=60))
    with pytest.raises(UsageError, match="no denoising step"):
        generate_tiles(db, popts(tiny), TileRunOptions(style="fish", colour_init=0.3))
    with pytest.raises(UsageError, match="unknown --executor"):
        generate_tiles(db, popts(tiny), TileRunOptions(style="fish", executor="spark"))


# ---- the command line --------------------------------------------------------------------------
def run(*args, code: int = 0):
    return invoke_cli(*args, code=code)


def test_cli_tiles_reproduce_scene(tiny, tmp_path):
    db = tmp_path / "cli.db"
    common = ["--model", tiny, "--steps", STEPS, "--threads", 1]
    res = run("generate", "tiles", db, "--style", "a bowl of {colour} fruit", *common, "--palette-size", 2,
              "--per-colour", 2, "--batch", 2, "--max-detail", 100, "--max-delta-e", 1000, "--json")
    out = json.loads(res.stdout)
    assert out["accepted"] == 4 and out["colours"] == 2 and out["tiles_per_s"] > 0
    assert "note: generating on the CPU" in res.stderr and "Created tile database" in res.stderr
    res = run("generate", "tiles", db, "--style", "a bowl of {colour} fruit", *common, "--palette-size", 2,
              "--per-colour", 2, "--batch", 2, "--max-detail", 100, "--max-delta-e", 1000, "--quiet")
    assert "0 tiles added" in res.stdout and "2 colours were already complete" in res.stdout and not res.stderr
    with TileDB.open(db, readonly=True) as d:
        first = int(d.ids()[0])
        assert "bowl of" in d.tiles([first])[0]["provenance"]["prompt"]
    res = run("generate", "reproduce", db, first, "--out", tmp_path / "again.png", "--check")
    assert "Identical" in res.stdout
    res = run("generate", "scene", "a harbour", *common, "--out", tmp_path / "s.png", "-q")
    assert (tmp_path / "s.png").is_file() and (tmp_path / "s.png.json").is_file() and "note" not in res.stderr


def test_cli_missing_model_and_no_gpu_are_one_line_errors(tiny, tmp_path):
    res = run("generate", "tiles", tmp_path / "x.db", "--style", "fish", "--model", tmp_path / "no-such-model", code=2)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0] and "--model" in lines[0] and "tiny-model" in lines[0]
    assert not (tmp_path / "x.db").exists()       # nothing is created for a run that cannot start
    res = run("generate", "scene", "a cat", "--model", "someone/not-a-real-model", "--offline",
              "--out", tmp_path / "s.png", code=2)
    assert len(res.output.strip().splitlines()) == 1 and "not a local folder" in res.output
    import torch
    if not torch.cuda.is_available():
        res = run("generate", "tiles", tmp_path / "y.db", "--style", "fish", "--model", tiny, "--device", "cuda", code=1)
        assert len(res.output.strip().splitlines()) == 1 and "no CUDA GPU" in res.output


def test_cli_tiny_model(tmp_path):
    res = run("generate", "tiny-model", tmp_path / "m")
    assert (tmp_path / "m" / "model_index.json").is_file() and "--model" in res.stdout
    res = run("generate", "tiny-model", tmp_path / "m", code=2)
    assert "not empty" in res.output
    run("generate", "tiny-model", tmp_path / "m", "--force")


def test_tile_stats_on_generated_tiles_match_provenance(tiny, tmp_path):
    db = tmp_path / "t.db"
    TileDB.create(db).close()
    generate_tiles(db, popts(tiny), TileRunOptions(style="fish", per_colour=1, palette_size=2, filters=LOOSE))
    with TileDB.open(db, readonly=True) as d:
        for r in d.tiles(d.ids()):
            s = tile_stats([np.asarray(d.load_original(r["id"]))])
            assert s["std"][0] == pytest.approx(r["provenance"]["filter"]["std"], abs=1e-3)
