"""The Ray executor (a local 2-CPU Ray instance, Ray Data feeding batches to an actor pool)
produces exactly the tiles the local executor does."""
from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="generation tests need torch: pip install torch==2.13.0 then 'mosaicdb[gen]'")
pytest.importorskip("diffusers", reason="generation tests need diffusers: pip install 'mosaicdb[gen]'")
pytest.importorskip("ray.data", reason="the Ray executor test needs Ray Data: pip install 'mosaicdb[ray]'")

from mosaicdb import TileDB  # noqa: E402
from mosaicdb.generate import FilterOptions, PipelineOptions, TileRunOptions, generate_tiles, save_tiny_pipeline  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")]  # Ray's own settings


def test_ray_and_local_executors_make_the_same_tiles(tmp_path):
    tiny = save_tiny_pipeline(tmp_path / "tiny")
    # torch's CPU threads change the low bits of the arithmetic: Ray CPU actors run 1 thread
    # each, so the local run does too, and then every pixel must agree
    popts = PipelineOptions(str(tiny), steps=2, guidance=5.0, threads=1)
    made = {}
    for executor in ("local", "ray"):
        db = tmp_path / f"{executor}.db"
        TileDB.create(db).close()
        ropts = TileRunOptions(style="fish", per_colour=2, palette_size=3, batch=2, seed=9, executor=executor,
                               ray_cpus=2 if executor == "ray" else None,
                               filters=FilterOptions(max_detail=100, max_delta_e=1000))
        rep = generate_tiles(db, popts, ropts)
        assert rep.accepted == 6 and rep.attempts == 6, rep.summary()
        with TileDB.open(db, readonly=True) as d:
            made[executor] = {(r["provenance"]["palette"]["hex"], r["provenance"]["attempt"]):
                              (r["hash"], r["provenance"]["seed"], r["provenance"]["pipeline"]["threads"])
                              for r in d.tiles(d.ids())}
            assert d.check().ok
    assert len(made["local"]) == 6
    assert made["ray"] == made["local"]
    import ray
    assert not ray.is_initialized()      # the executor shut down the instance it started
