"""Units of `mosaicdb.generate` that need no torch: named colours, palettes (k-means in Lab,
spread), prompts, the tile filters on real images, seeds, model location and the install hints."""
from __future__ import annotations

import doctest
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mosaicdb.errors import MissingDependency, UsageError
from mosaicdb.features import rgb_to_lab
from mosaicdb.generate import colours, deps, filters, palette, prompts
from mosaicdb.generate.filters import FilterOptions, judge, tile_stats
from mosaicdb.generate.pipeline import locate_model
from mosaicdb.generate.worker import derive_seed

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NO_DATA = f"real-image tests need the shared data folder ({DATA}), which is absent here"


def kodak(i: int) -> np.ndarray:
    p = DATA / "targets" / "kodak" / f"kodim{i:02d}.png"
    if not p.is_file():
        pytest.skip(NO_DATA)
    return np.asarray(Image.open(p).convert("RGB"))


@pytest.fixture(scope="module")
def cifar() -> np.ndarray:
    p = DATA / "tiles" / "cifar10_train_1.png"
    if not p.is_file():
        pytest.skip(NO_DATA)
    a = np.asarray(Image.open(p).convert("RGB"))
    return a.reshape(100, 32, 100, 32, 3).swapaxes(1, 2).reshape(-1, 32, 32, 3)[:1000]


# ---- named colours -----------------------------------------------------------------------------
def test_colour_table_is_the_css_list_without_aliases():
    assert len(colours.NAMES) == 139 == len({tuple(c) for c in colours.RGB.tolist()})
    assert colours.rgb_of("rebeccapurple") == (0x66, 0x33, 0x99)
    assert colours.rgb_of("Dark Slate Grey") == (0x2F, 0x4F, 0x4F)
    assert colours.rgb_of("aqua") == colours.rgb_of("cyan") == (0, 255, 255)
    with pytest.raises(KeyError):
        colours.rgb_of("blurple")


def test_every_named_colour_names_itself():
    assert colours.nearest_names(colours.RGB) == list(colours.NAMES)


@pytest.mark.parametrize("rgb, name", [((254, 1, 2), "red"), ((0, 0, 120), "navy"), ((251, 251, 251), "white"),
                                       ((128, 0, 128), "purple"), ((52, 203, 48), "lime green"),
                                       ((10, 10, 10), "black"), ((255, 140, 5), "dark orange")])
def test_nearest_name(rgb, name):
    assert colours.nearest_name(rgb) == name


def test_nearest_name_is_nearest_in_lab():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (200, 3), dtype=np.uint8)
    names = colours.nearest_names(rgb)
    table = rgb_to_lab(colours.RGB).astype(np.float64)
    for c, n in zip(rgb_to_lab(rgb).astype(np.float64), names):
        d = np.sqrt(((table - c) ** 2).sum(1))
        assert d[colours.NAMES.index(n)] == pytest.approx(d.min())


def test_colours_doctests():
    assert doctest.testmod(colours).failed == 0


# ---- palettes ----------------------------------------------------------------------------------
def test_kmeans_recovers_separated_clusters():
    rng = np.random.default_rng(1)
    centres = np.array([[30, 10, -20], [70, -30, 40], [50, 60, 10], [90, 0, 0]], float)
    sizes = [400, 300, 200, 100]
    pts = np.concatenate([c + rng.normal(0, 1.5, (n, 3)) for c, n in zip(centres, sizes)])
    got, counts = palette.kmeans_lab(pts, 4, seed=3)
    assert counts.tolist() == sizes                      # largest cluster first
    np.testing.assert_allclose(got, centres, atol=0.5)


def test_kmeans_matches_scipy_reference_inertia():
    from scipy.cluster.vq import kmeans2
    lab = rgb_to_lab(palette.downsample(kodak(23), 64)).reshape(-1, 3).astype(np.float64)

    def inertia(c):
        return ((lab[:, None, :] - c[None]) ** 2).sum(-1).min(1).sum()

    ours, _ = palette.kmeans_lab(lab, 16, seed=0)
    ref = min(inertia(kmeans2(lab, 16, minit="++", seed=s)[0]) for s in range(3))
    assert inertia(ours) <= 1.05 * ref


def test_kmeans_is_deterministic_and_handles_few_distinct_colours():
    pts = np.repeat(np.array([[10.0, 5, 5], [60, -20, 30]]), 50, axis=0)
    a, ca = palette.kmeans_lab(pts, 8, seed=5)
    b, cb = palette.kmeans_lab(pts, 8, seed=5)
    assert len(a) == 2 and np.array_equal(a, b) and ca.tolist() == cb.tolist() == [50, 50]


def test_palette_from_real_target():
    img = kodak(23)   # parrots: saturated reds, greens, yellows
    pal = palette.palette_from_images([img], 24, seed=0)
    assert 20 <= len(pal) <= 24 and len(set(pal.hex)) == len(pal)
    assert pal.weights.sum() == pytest.approx(1.0) and np.all(np.diff(pal.weights) <= 1e-12)
    # every downsampled pixel is near some palette colour, much nearer than to the image mean
    lab = rgb_to_lab(palette.downsample(img)).reshape(-1, 3).astype(np.float64)
    d = np.sqrt(((lab[:, None] - pal.lab[None].astype(np.float64)) ** 2).sum(-1)).min(1)
    d_mean = np.sqrt(((lab - lab.mean(0)) ** 2).sum(-1))
    assert np.median(d) < 0.25 * np.median(d_mean)
    assert pal.colour(0)["name"] in colours.NAMES and pal.to_json()["colours"][0]["hex"] == pal.hex[0]
    assert palette.from_json(pal.to_json()).hex == pal.hex


def test_palette_from_target_files(tmp_path):
    a = np.zeros((40, 60, 3), np.uint8)
    a[:, :20] = (200, 30, 30)
    a[:, 20:] = (20, 40, 200)
    Image.fromarray(a).save(tmp_path / "t.png")
    pal = palette.palette_from_targets([tmp_path / "t.png"], 2)
    assert pal.hex == ["#1428c8", "#c81e1e"] and pal.weights.round(3).tolist() == [0.667, 0.333]
    with pytest.raises(UsageError, match="missing.png"):
        palette.palette_from_targets([tmp_path / "missing.png"], 2)


@pytest.mark.parametrize("n", [1, 8, 64, 256])
def test_spread_palette_covers_the_gamut(n):
    pal = palette.spread_palette(n)
    assert len(pal) == n and len(set(pal.hex)) == n
    assert pal.hex[0] == "#808080"
    assert palette.spread_palette(n + 5).hex[:n] == pal.hex            # a prefix of longer ones
    if n >= 8:
        lab = pal.lab.astype(np.float64)
        d = np.sqrt(((lab[:, None] - lab[None]) ** 2).sum(-1)) + np.eye(n) * 1e9
        rng = np.random.default_rng(0)
        rand = rgb_to_lab(rng.integers(0, 256, (n, 3), dtype=np.uint8)).astype(np.float64)
        dr = np.sqrt(((rand[:, None] - rand[None]) ** 2).sum(-1)) + np.eye(n) * 1e9
        assert d.min() > dr.min()          # better spread than random colours


def test_palette_size_is_checked():
    with pytest.raises(UsageError, match="--palette-size"):
        palette.spread_palette(0)


# ---- prompts -----------------------------------------------------------------------------------
def test_prompts_name_the_colour():
    for style in prompts.STYLES:
        p = prompts.prompt_for(style, "dark olive green")
        assert "dark olive green" in p and "{" not in p
    assert prompts.prompt_for("a bowl of {colour} fruit", "red") == "a bowl of red fruit"
    assert prompts.prompt_for("a bowl of {color} fruit", "red") == "a bowl of red fruit"
    assert prompts.prompt_for("koi", "gold").startswith("koi, gold colour palette")
    for bad in ("", "   ", "a {thing} here"):
        with pytest.raises(UsageError):
            prompts.template(bad)


# ---- filters -----------------------------------------------------------------------------------
def test_flat_and_noise_are_rejected():
    rng = np.random.default_rng(0)
    flat = np.full((64, 64, 3), (200, 30, 30), np.uint8)
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    halves = np.zeros((64, 64, 3), np.uint8)
    halves[:32] = 255    # high std, but smooth: not chaotic
    s = tile_stats([flat, noise, halves])
    assert s["std"][0] < 0.01 and s["detail"][0] < 0.01
    assert s["detail"][1] > 40 and s["detail"][2] < 0.01 and s["std"][2] == pytest.approx(50, abs=0.5)
    got = judge(s, s["mean_lab"], FilterOptions())
    assert got == ["flat", "chaotic", ""]


def test_real_tiles_mostly_pass(cifar):
    s = tile_stats(list(cifar))
    verdict = judge(s, s["mean_lab"], FilterOptions())
    assert np.mean([v == "" for v in verdict]) > 0.95
    assert np.percentile(s["detail"], 99) < FilterOptions().max_detail
    # the same photos with heavy noise added become chaotic
    rng = np.random.default_rng(0)
    noisy = np.clip(cifar[:100].astype(int) + rng.normal(0, 40, cifar[:100].shape), 0, 255).astype(np.uint8)
    s2 = tile_stats(list(noisy))
    assert np.mean([v == "chaotic" for v in judge(s2, s2["mean_lab"], FilterOptions())]) > 0.9


def test_sky_crop_is_flat_and_detail_crop_is_not():
    img = kodak(3)               # hats: a flat wall at the top, detailed hats lower down
    s = tile_stats([img[32:96, 384:448], img[300:428, 300:428]])
    assert judge(s, s["mean_lab"], FilterOptions(min_std=6)) == ["flat", ""]


def test_statistics_do_not_depend_on_resolution():
    img = kodak(23)[100:356, 200:456]                       # 256 px crop
    small = np.asarray(Image.fromarray(img).resize((64, 64), Image.Resampling.BOX))
    a, b = tile_stats([img]), tile_stats([small])
    for k in ("mean_lab", "std", "detail"):
        np.testing.assert_allclose(a[k], b[k], atol=1e-6)


@pytest.mark.parametrize("max_de, expect", [(5.0, "off-colour"), (40.0, "")])
def test_palette_distance(max_de, expect):
    img = kodak(23)[100:228, 200:328]
    s = tile_stats([img])
    target = s["mean_lab"][0] + np.array([0.0, 12.0, 0.0])   # 12 delta E away
    assert judge(s, target, FilterOptions(max_delta_e=max_de)) == [expect]
    assert filters.describe(s, 0, target)["delta_e"] == pytest.approx(12.0, abs=1e-3)


def test_filter_options_are_validated():
    with pytest.raises(UsageError, match="--min-std"):
        FilterOptions(min_std=50, max_std=40)
    with pytest.raises(UsageError, match="--max-delta-e"):
        FilterOptions(max_delta_e=-1)


# ---- seeds, model location, install hints ------------------------------------------------------
def test_seeds_are_derived_deterministically():
    a = derive_seed(0, "#ff0000", 3)
    assert a == derive_seed(0, "#FF0000", 3) and 0 <= a < 2 ** 31
    others = {derive_seed(0, "#ff0000", 4), derive_seed(1, "#ff0000", 3), derive_seed(0, "#ff0001", 3)}
    assert a not in others and len(others) == 3
    assert len({derive_seed(0, "#808080", k) for k in range(1000)}) == 1000


def test_locate_model(tmp_path):
    with pytest.raises(UsageError, match="does not exist.*tiny-model"):
        locate_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no model_index.json"):
        locate_model(str(tmp_path / "empty"))
    (tmp_path / "m.safetensors").write_bytes(b"x")
    with pytest.raises(UsageError, match="single-file"):
        locate_model(str(tmp_path / "m.safetensors"))
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "model_index.json").write_text("{}")
    assert locate_model(str(tmp_path / "ok")) == (str((tmp_path / "ok").resolve()), True)
    assert locate_model("stabilityai/sdxl-turbo") == ("stabilityai/sdxl-turbo", False)
    for bad in ("./relative/missing", "a/b/c", "not a model"):
        with pytest.raises(UsageError):
            locate_model(bad)


@pytest.mark.parametrize("module, call, hint", [("torch", deps.torch, "mosaicdb[gen]"),
                                                ("diffusers", deps.diffusers, "mosaicdb[gen]"),
                                                ("ray", deps.ray, "mosaicdb[ray]")])
def test_missing_dependency_says_how_to_install(monkeypatch, module, call, hint):
    monkeypatch.setitem(sys.modules, module, None)       # makes `import module` fail
    if module == "ray":
        monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(MissingDependency, match=rf"pip install '{hint.replace('[', '.').replace(']', '.')}'") as e:
        call()
    assert "\n" not in str(e.value)


def test_importing_the_package_imports_no_heavy_module():
    import subprocess
    code = "import sys, mosaicdb.generate, mosaicdb_cli.generate; print([m for m in ('torch', 'diffusers', 'ray') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
