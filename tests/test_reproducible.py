"""Reproducible output: the embedded sRGB profile is fixed, standard bytes, and the same
assignment and options give byte-identical print files and pyramid TIFFs."""
from __future__ import annotations

import hashlib
import io
import json
import struct
import time

import numpy as np
import pytest
import tifffile
from clirun import invoke_cli
from PIL import Image, ImageCms

from mosaicdb import __version__
from mosaicdb import assignment as asg
from mosaicdb.srgb import colorants, srgb_icc, srgb_sha256
from test_pyramid import random_assignment

# Pinned: any change to these bytes changes every file we write; make it on purpose.
SRGB_SHA256 = "68d43703f2a28de11e2119549e082317cf4c309da653bf760e5f75abdc13c4d5"


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def next_second() -> None:
    """Wait until the clock's second changes, so a time stamp would differ between two runs."""
    t = time.time()
    time.sleep(1.0 - (t - int(t)) + 0.02)


# ---- the profile -------------------------------------------------------------------------------
def test_srgb_profile_is_pinned_and_well_formed():
    b = srgb_icc()
    assert srgb_sha256() == SRGB_SHA256 == hashlib.sha256(b).hexdigest()
    assert struct.unpack(">I", b[:4])[0] == len(b) and b[36:40] == b"acsp"
    assert (b[12:16], b[16:20], b[20:24]) == (b"mntr", b"RGB ", b"XYZ ")
    assert b[8] == 2 and b[84:100] == b"\0" * 16  # ICC v2: no profile ID
    p = ImageCms.ImageCmsProfile(io.BytesIO(b))
    assert ImageCms.getProfileDescription(p).strip() == "sRGB IEC61966-2.1"
    assert p.profile.media_white_point[0] == pytest.approx((0.9642, 1.0, 0.8249), abs=1e-4)
    # the colorants add up to the PCS white exactly, and are the published D50-adapted values
    assert tuple(colorants().sum(axis=1)) == (0xF6D6, 0x10000, 0xD32D)
    np.testing.assert_allclose(colorants() / 65536, [[0.4361, 0.3851, 0.1431], [0.2225, 0.7169, 0.0606],
                                                     [0.0139, 0.0971, 0.7141]], atol=2e-4)


@pytest.mark.parametrize("pixels", ["grid", "greys"])
def test_srgb_profile_agrees_with_littlecms_srgb(pixels):
    """LittleCMS converts between our bytes and its own built-in sRGB without moving a level."""
    if pixels == "grid":
        v = np.linspace(0, 255, 18).round().astype(np.uint8)
        a = np.stack(np.meshgrid(v, v, v, indexing="ij"), -1).reshape(1, -1, 3)
    else:
        a = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    ours = ImageCms.ImageCmsProfile(io.BytesIO(srgb_icc()))
    lcms = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    im = Image.fromarray(np.ascontiguousarray(a))
    for src, dst in ((ours, lcms), (lcms, ours)):
        out = np.asarray(ImageCms.applyTransform(im, ImageCms.buildTransform(src, dst, "RGB", "RGB")))
        assert np.abs(out.astype(int) - a).max() <= 1


# ---- the files ---------------------------------------------------------------------------------
@pytest.fixture
def saved_json(synthetic_db, tmp_path):
    out = tmp_path / "m.png"
    asg.save(out, random_assignment(synthetic_db, 12, 9, seed=3))
    return asg.sidecar_paths(out)[0]


def test_two_prints_are_identical(saved_json, tmp_path):
    args = ["print", saved_json, "--size", "12cm", "--dpi", "100", "--panels", "2x1", "--overlap", "1cm",
            "--bleed", "3mm", "--proof", "--color", "mean", "-q"]
    runs = []
    for i in range(2):
        if i:
            next_second()
        out = tmp_path / "out"
        invoke_cli(*args, "--out", out, code=0)
        runs.append(out.rename(tmp_path / f"run{i}"))
    files = sorted(p.name for p in runs[0].iterdir())
    assert files == sorted(p.name for p in runs[1].iterdir())
    tifs = [f for f in files if f.endswith(".tif")]
    assert len(tifs) == 2
    for f in files:
        if f.endswith(".json"):  # the manifest: identical but for how long the run took
            a, b = (json.loads((r / f).read_text()) for r in runs)
            a.pop("seconds"), b.pop("seconds")
            assert a == b and a["profile"]["sha256"] == SRGB_SHA256
        else:
            assert sha(runs[0] / f) == sha(runs[1] / f), f"{f} differs between two runs"
    with tifffile.TiffFile(runs[0] / tifs[0]) as tf:
        assert tf.pages[0].tags[34675].value == srgb_icc() and 306 not in tf.pages[0].tags


@pytest.mark.parametrize("extra", [[], ["--ome"], ["--codec", "deflate"]])
def test_two_pyramids_are_identical(saved_json, tmp_path, extra):
    outs = []
    for i in range(2):
        if i:
            next_second()
        out = tmp_path / f"p{i}.tif"
        invoke_cli("render", saved_json, "--out", out, "--tile-px", "48", *extra, "-q", code=0)
        outs.append(out)
    assert sha(outs[0]) == sha(outs[1])
    with tifffile.TiffFile(outs[0]) as tf:
        levels = tf.series[0].levels
        assert len(levels) > 1
        for lv in levels:
            page = lv.keyframe
            assert page.tags[34675].value == srgb_icc()
            assert 306 not in page.tags and page.tags[305].value == f"mosaicdb {__version__}"
        if extra == ["--ome"]:
            assert f'Creator="mosaicdb {__version__}"' in tf.ome_metadata and "tifffile" not in tf.ome_metadata


def test_ome_uuid_names_the_content(synthetic_db, tmp_path):
    """Deterministic, but not one constant: another assignment gets another UUID."""
    uuids = []
    for seed in (3, 4):
        out = tmp_path / f"s{seed}.png"
        asg.save(out, random_assignment(synthetic_db, 12, 9, seed=seed))
        tif = tmp_path / f"s{seed}.tif"
        invoke_cli("render", asg.sidecar_paths(out)[0], "--out", tif, "--tile-px", "16", "--ome", "-q", code=0)
        with tifffile.TiffFile(tif) as tf:
            uuids.append(tf.ome_metadata.split('UUID="', 1)[1].split('"', 1)[0])
    assert uuids[0] != uuids[1] and all(u.startswith("urn:uuid:") for u in uuids)
