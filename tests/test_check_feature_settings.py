"""Quick `db check` recomputes a few tiles' features from their thumbnails: a catalog whose
feature settings are not the ones the stored rows were computed with is an error (exit 1)
naming the fix, not something only --deep finds."""
from __future__ import annotations

import json
import re
import sqlite3

import pytest

from clirun import invoke_cli
from conftest import write_synthetic
from mosaicdb import TileDB

PYRAMID = {"space": "rgb", "levels": [[1, 1.0], [2, 1.0], [4, 1.0], [8, 1.0]], "samples": 16, "pca_dims": 48}
TAMPERED = {
    "lab-grid mean weight": ("lab-grid", {"mean_weight": 2.0, "feature_params": {"grid": 4, "mean_weight": 2.0}}),
    "rgb-pyramid level weight": ("rgb-pyramid", {"feature_params": {**PYRAMID, "levels": [[1, 1.0], [2, 1.0],
                                                                                         [4, 1.0], [8, 2.0]]}}),
    "rgb-pyramid said lab": ("rgb-pyramid", {"feature_kind": "lab-pyramid", "feature_params": {**PYRAMID,
                                                                                               "space": "lab"}}),
}


def _db(tmp_path, kind: str):
    write_synthetic(tmp_path / "src", 40, seed=11)
    with TileDB.create(tmp_path / "t.db", features=kind) as db:
        db.ingest([tmp_path / "src"], workers=1)
        assert db.meta.get("feature_params", PYRAMID) == PYRAMID or kind == "lab-grid"
    return tmp_path / "t.db"


def _set_meta(path, values: dict) -> None:
    with sqlite3.connect(path / "catalog.sqlite") as con:
        con.executemany("UPDATE meta SET value = ? WHERE key = ?", [(json.dumps(v), k) for k, v in values.items()])
    con.close()


@pytest.mark.parametrize("case", TAMPERED)
def test_quick_check_finds_features_computed_with_other_settings(tmp_path, case):
    kind, values = TAMPERED[case]
    path = _db(tmp_path, kind)
    invoke_cli("db", "check", path, code=0)
    _set_meta(path, values)
    res = invoke_cli("db", "check", path, code=1)
    now = values.get("feature_kind", kind)
    assert "none of 32 sampled tiles has the features the catalog's settings" in res.output, res.output
    assert f"`mosaic db reindex {path} --features {now}`" in res.output
    report = json.loads(invoke_cli("db", "check", path, "--json", code=1).stdout)
    assert not report["ok"] and len(report["problems"]) == 1
    invoke_cli("db", "reindex", path, "--features", now, code=0)
    invoke_cli("db", "check", path, code=0)
    invoke_cli("db", "check", path, "--deep", code=0)


def test_quick_check_finds_some_damaged_rows_and_deep_check_and_repair_the_rest(tmp_path):
    """Half the tiles' feature rows changed: the 32 sampled of 40 hold some, not all of them."""
    path = _db(tmp_path, "rgb-pyramid")
    with TileDB.open(path) as db:
        f = db._features.read(db.next_id, mode="r+")
        f[:20] += 5.0
        f.flush()
        del f
    res = invoke_cli("db", "check", path, code=1)
    found = re.search(r"features: (\d+) of 32 sampled tiles disagree with their thumbnails", res.output)
    assert found and 12 <= int(found.group(1)) <= 20, res.output
    assert f"`mosaic db check --deep {path}` verifies every row" in res.output
    assert "fail their checksum" in invoke_cli("db", "check", "--deep", path, code=1).output
    invoke_cli("db", "repair", path, code=0)
    invoke_cli("db", "check", path, code=0)
