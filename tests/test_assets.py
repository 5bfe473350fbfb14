"""Where the viewer finds OpenSeadragon: --osd-dir, then $MOSAICDB_OPENSEADRAGON (either one,
when given, is the only place tried), then the copy installed with the package, then a
checkout's node_modules, then the current directory's."""
from __future__ import annotations

import pytest

from mosaicdb.errors import MissingDependency
from mosaicdb.serve import assets


def fake_build(folder, marker: bytes):
    folder.mkdir(parents=True)
    (folder / assets.OSD_SCRIPT).write_bytes(marker)
    (folder / "images").mkdir()
    (folder / "images" / "home_rest.png").write_bytes(b"png" + marker)
    return folder


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Four fake OpenSeadragon builds, one per place, and the environment cleared."""
    monkeypatch.delenv(assets.ENV, raising=False)
    p = {"explicit": fake_build(tmp_path / "explicit", b"E"),
         "env": fake_build(tmp_path / "envpkg" / "build" / "openseadragon", b"V").parents[1],  # the npm package
         "bundled": fake_build(tmp_path / "site" / "openseadragon", b"B"),
         "repo": fake_build(tmp_path / "repo" / "node_modules" / "openseadragon" / "build" / "openseadragon", b"R"),
         "cwd": fake_build(tmp_path / "cwd" / "node_modules" / "openseadragon" / "build" / "openseadragon", b"C")}
    monkeypatch.setattr(assets, "BUNDLED", p["bundled"])
    monkeypatch.setattr(assets, "REPO", tmp_path / "repo")
    monkeypatch.chdir(tmp_path / "cwd")
    return p


def served(osd_dir=None) -> bytes:
    return assets.load_assets(osd_dir)["/osd/" + assets.OSD_SCRIPT][0]


def test_lookup_order(places, monkeypatch, tmp_path):
    monkeypatch.setenv(assets.ENV, str(places["env"]))
    assert served(places["explicit"]) == b"E"
    assert served() == b"V"                       # the npm package folder: its build/ is found
    monkeypatch.delenv(assets.ENV)
    assert served() == b"B"
    assert assets.load_assets()["/osd/images/home_rest.png"][0] == b"pngB"
    (places["bundled"] / assets.OSD_SCRIPT).unlink()
    assert served() == b"R"
    (places["repo"] / assets.OSD_SCRIPT).unlink()
    assert served() == b"C"
    (places["cwd"] / assets.OSD_SCRIPT).unlink()
    with pytest.raises(MissingDependency, match="reinstall mosaicdb from its wheel.*npm ci"):
        served()


def test_a_wrong_override_is_an_error_not_a_fallback(places, monkeypatch, tmp_path):
    with pytest.raises(MissingDependency, match=r"nowhere \(--osd-dir\)"):
        served(tmp_path / "nowhere")
    monkeypatch.setenv(assets.ENV, str(tmp_path / "nowhere"))
    with pytest.raises(MissingDependency, match=r"nowhere \(\$MOSAICDB_OPENSEADRAGON\)"):
        served()
