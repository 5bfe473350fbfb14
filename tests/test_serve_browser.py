"""`mosaic serve` end to end in Debian's headless Chromium (selenium + chromedriver): load the
page, zoom in, click a known cell and read the side panel; hover at high zoom; keep a screenshot.

Skipped, with the reason, only where chromium/chromedriver cannot be found or started (CI
installs them: see .ci/run)."""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_serve import (BMP_CELL, FILE_CELL, GEN_CELL, GENERATED, TILE_PX, Served,  # noqa: F401 (fixtures, mark)
                        mosaics, pytestmark)

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,800"]
WAIT = 20


def find(name: str, default: str) -> str | None:
    return default if Path(default).is_file() else shutil.which(name)


@pytest.fixture(scope="session")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    chromium, driver = find("chromium", CHROMIUM), find("chromedriver", CHROMEDRIVER)
    if not chromium or not driver:
        pytest.skip("Debian's chromium and chromium-driver are not installed "
                    "(apt-get install chromium chromium-driver; .ci/run does it)")
    profile = tempfile.mkdtemp(prefix="mosaic-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for f in FLAGS + [f"--user-data-dir={profile}"]:
        opts.add_argument(f)
    try:
        d = webdriver.Chrome(options=opts, service=Service(driver))
    except WebDriverException as e:
        shutil.rmtree(profile, ignore_errors=True)
        pytest.skip(f"chromium could not be started: {str(e).splitlines()[0]}")
    d.set_script_timeout(WAIT)
    yield d
    d.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait_for(d, script: str, what: str, timeout: float = WAIT):
    """Poll a JS expression until it is truthy; its value."""
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(d, timeout, poll_frequency=0.1).until(lambda d: d.execute_script("return " + script), what)


def wait_loaded(d, timeout: float = WAIT):
    wait_for(d, "window.mosaicViewer && mosaicViewer.world.getItemCount() === 1 && "
                "mosaicViewer.world.getItemAt(0).getFullyLoaded() && !mosaicViewer.viewport.isAnimating?.()",
             "the mosaic's tiles to load", timeout)


def cell_pixel(d, row: int, col: int) -> tuple[float, float]:
    """Where the centre of a cell is, in CSS pixels from the viewer element's centre."""
    return tuple(d.execute_script("""
        const v = mosaicViewer, [row, col, cw] = arguments;
        const p = v.viewport.imageToViewerElementCoordinates(new OpenSeadragon.Point((col + 0.5) * cw, (row + 0.5) * cw));
        const r = v.element.getBoundingClientRect();
        return [p.x - r.width / 2, p.y - r.height / 2];""", row, col, TILE_PX))


def panel(d) -> dict:
    ids = ["tile-id", "cell-pos", "tile-distance", "tile-origin", "tile-source", "gen-prompt", "gen-seed", "gen-model"]
    return d.execute_script("return Object.fromEntries(arguments[0].map(i => [i, document.getElementById(i).textContent]))",
                            ids)


def test_click_a_cell_shows_its_tile(browser, mosaics):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By
    s = Served(mosaics["tiff"])
    d = browser
    saved = mosaics["saved"]
    try:
        d.get(f"http://127.0.0.1:{s.port}/")
        wait_loaded(d)
        assert "13 × 9 cells" in d.find_element(By.ID, "mosaic-summary").text
        viewer_el = d.find_element(By.ID, "viewer")
        # zoom in with the mouse wheel, as a person would
        home = d.execute_script("return mosaicViewer.viewport.getZoom()")
        ActionChains(d).scroll_from_origin(ScrollOrigin.from_element(viewer_el), 0, -300).perform()
        wait_for(d, f"mosaicViewer.viewport.getZoom(true) > {home} * 1.1", "the wheel to zoom in")
        # then to a known cell at a zoom where cells are big on screen
        row, col = GEN_CELL
        d.execute_script("""
            const v = mosaicViewer, [x, y] = arguments;
            v.viewport.zoomTo(v.viewport.imageToViewportZoom(2.5), null, true);
            v.viewport.panTo(v.viewport.imageToViewportCoordinates(x, y), true);""",
                         (col + 0.5) * TILE_PX, (row + 0.5) * TILE_PX)
        wait_loaded(d)
        dx, dy = cell_pixel(d, row, col)
        ActionChains(d).move_to_element_with_offset(viewer_el, int(dx), int(dy)).click().perform()
        tid = int(saved.tile_ids[row, col])
        wait_for(d, f"document.getElementById('tile-id').textContent === '{tid}'", "the panel to show the clicked tile")
        p = panel(d)
        assert p["cell-pos"] == f"row {row}, column {col}"
        assert p["tile-origin"] == "generated"
        assert p["gen-prompt"] == GENERATED["prompt"] and p["gen-seed"] == "4242" and p["gen-model"] == GENERATED["model"]
        assert p["tile-distance"].startswith(f"{float(saved.cost[row, col]):.2f}")
        wait_for(d, "document.getElementById('tile-original').complete && "
                    "document.getElementById('tile-original').naturalWidth > 0", "the original to load")
        natural = d.execute_script("return document.getElementById('tile-original').naturalWidth")
        assert natural == 64  # the generated original, not a thumbnail or a mosaic tile
        assert d.find_element(By.ID, "tile-generation").is_displayed()
        ARTIFACTS.mkdir(exist_ok=True)
        d.save_screenshot(str(ARTIFACTS / "serve_browser_generated.png"))

        # hovering over a neighbour at this zoom shows it too; its source is the PNG file
        row2, col2 = FILE_CELL if FILE_CELL != GEN_CELL else BMP_CELL
        d.execute_script("""
            const v = mosaicViewer, [x, y] = arguments;
            v.viewport.panTo(v.viewport.imageToViewportCoordinates(x, y), true);""",
                         (col2 + 1) * TILE_PX, (row2 + 1) * TILE_PX)
        wait_loaded(d)
        dx, dy = cell_pixel(d, row2, col2)
        ActionChains(d).move_to_element_with_offset(viewer_el, int(dx) - 3, int(dy) - 3) \
            .move_by_offset(3, 3).perform()
        tid2 = int(saved.tile_ids[row2, col2])
        wait_for(d, f"document.getElementById('tile-id').textContent === '{tid2}'", "hover to show the tile under the pointer")
        p = panel(d)
        assert p["tile-origin"] == "file" and p["tile-source"].endswith(".png") and Path(p["tile-source"]).is_file()
        assert not d.find_element(By.ID, "tile-generation").is_displayed()  # no prompt for a file tile
        assert d.find_element(By.ID, "tile-original").is_displayed()
        wait_for(d, "document.getElementById('tile-original').complete && "
                    "document.getElementById('tile-original').naturalWidth > 0", "the original to load")
        wait_loaded(d)
        shot = ARTIFACTS / "serve_browser.png"
        d.save_screenshot(str(shot))
        print(f"screenshots: {shot}, {ARTIFACTS / 'serve_browser_generated.png'}")
        # the screenshot shows the mosaic (not a blank canvas) and the filled panel
        img = np.asarray(Image.open(shot).convert("RGB"))
        assert img.shape[0] > 400 and img.std() > 20
        errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        s.close()


# ---- recursive: zoom into a tile until it is a mosaic, click a sub-tile -----------------------
from test_serve_rendered import G as SUB_GRID, made  # noqa: E402,F401 (fixture)

SLOW_WAIT = 90   # the server also starts matching (numba may compile) beside the first tiles, on a loaded machine
REC_T = 256   # served at 256 px per cell: the whole 1536 x 1024 mosaic fits the window before recursion


def test_zoom_into_a_tile_until_it_is_a_mosaic_and_click_a_sub_tile(browser, made):  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    d = browser
    s = Served(made["json"], recursive=1, recursive_grid=SUB_GRID, tile_px=REC_T)
    saved, src = made["saved"], s.viewer.source
    cell = REC_T * SUB_GRID                     # a cell of the mosaic, in the served image's pixels
    row, col = 1, 2
    try:
        d.get(f"http://127.0.0.1:{s.port}/")
        wait_loaded(d, SLOW_WAIT)
        assert "every tile is a 4 × 4 mosaic of itself" in d.find_element(By.ID, "mosaic-summary").text
        assert not [k for k in src.cache._lru if isinstance(k[0], int) and k[0] > src.base_top]  # whole picture only
        # zoom until the cell fills much of the screen: its tile turns into a mosaic
        d.execute_script("""
            const v = mosaicViewer, [x, y, z] = arguments;
            v.viewport.zoomTo(v.viewport.imageToViewportZoom(z), null, true);
            v.viewport.panTo(v.viewport.imageToViewportCoordinates(x, y), true);""",
                         (col + 0.5) * cell, (row + 0.5) * cell, 0.8)
        tid = int(saved.tile_ids[row, col])
        deadline = time.monotonic() + SLOW_WAIT        # the page asks for tiles below the mosaic's own levels...
        while not [k for k in list(src.cache._lru) if isinstance(k[0], int) and k[0] > src.base_top]:
            assert time.monotonic() < deadline, "no tile below the mosaic's own levels was asked for"
            time.sleep(0.1)
        time.sleep(0.3)
        wait_loaded(d, SLOW_WAIT)                            # ...and shows them
        sub = src.subs.node(tid).cells.saved                        # drawn from this tile's sub-mosaic
        ARTIFACTS.mkdir(exist_ok=True)
        d.save_screenshot(str(ARTIFACTS / "serve_browser_recursive.png"))
        # the screen shows the sub-mosaic: compare the cell's screen area with its sub-mosaic drawn here
        shot = np.asarray(Image.open(ARTIFACTS / "serve_browser_recursive.png").convert("RGB")).astype(float)
        box = d.execute_script("""
            const v = mosaicViewer, [x, y, w] = arguments;
            const a = v.viewport.imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
            const b = v.viewport.imageToViewerElementCoordinates(new OpenSeadragon.Point(x + w, y + w));
            const r = v.element.getBoundingClientRect();
            return [a.x + r.left, a.y + r.top, b.x + r.left, b.y + r.top];""", col * cell, row * cell, cell)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        seen = shot[max(0, y0):y1, max(0, x0):x1]
        from mosaicdb.render.cells import CellRenderer
        from mosaicdb.render.options import RenderOptions
        px = CellRenderer(s.viewer.db, sub, RenderOptions(tile_px=REC_T)).region(0, SUB_GRID, 0, SUB_GRID, 32)
        import cv2
        want = cv2.resize(px, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA).astype(float)
        want = want[max(0, -y0):max(0, -y0) + seen.shape[0], max(0, -x0):max(0, -x0) + seen.shape[1]]
        coarse = lambda a: cv2.resize(a, (SUB_GRID, SUB_GRID), interpolation=cv2.INTER_AREA)  # noqa: E731
        assert np.abs(coarse(seen) - coarse(want)).mean() < 12
        # click sub-cell (2, 1) of that tile's mosaic
        srow, scol = 2, 1
        sub_px = cell / SUB_GRID
        dx, dy = d.execute_script("""
            const v = mosaicViewer, [x, y] = arguments;
            const p = v.viewport.imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
            const r = v.element.getBoundingClientRect();
            return [p.x - r.width / 2, p.y - r.height / 2];""",
                                  col * cell + (scol + 0.5) * sub_px, row * cell + (srow + 0.5) * sub_px)
        viewer_el = d.find_element(By.ID, "viewer")
        ActionChains(d).move_to_element_with_offset(viewer_el, int(dx), int(dy)).click().perform()
        sid = int(sub.tile_ids[srow, scol])
        wait_for(d, f"document.getElementById('tile-id').textContent === '{sid}'", "the panel to show the sub-tile", SLOW_WAIT)
        p = panel(d)
        path = d.execute_script("return document.getElementById('tile-path').textContent")
        assert path == f"mosaic → tile {tid} (row {row}, column {col}) → tile {sid} (row {srow}, column {scol})"
        assert p["cell-pos"] == f"row {srow}, column {scol} of tile {tid}'s mosaic"
        assert p["tile-distance"].startswith(f"{float(sub.cost[srow, scol]):.2f}")
        assert p["tile-origin"] == "file" and Path(p["tile-source"]).is_file()   # where the sub-tile came from
        wait_for(d, "document.getElementById('tile-original').complete && "
                    "document.getElementById('tile-original').naturalWidth > 0", "the sub-tile's original to load")
        d.save_screenshot(str(ARTIFACTS / "serve_browser_recursive_panel.png"))
        errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        s.close()
