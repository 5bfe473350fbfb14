// The mosaicdb viewer: OpenSeadragon on /mosaic.dzi, and a side panel for the cell under a
// click (or under the pointer once a cell is large on screen), filled from /api/cell/ROW/COL.
// With --recursive, a cell zoomed far enough is drawn as its tile's own mosaic: a click then
// names the path /api/cell/ROW/COL/SUBROW/SUBCOL/... down to the depth on screen.
// Text from the database (paths, prompts) is only ever set as textContent.
(function () {
  "use strict";
  const HOVER_CELL_PX = 96;   // hover shows a cell once it is at least this wide on screen
  const $ = (id) => document.getElementById(id);

  function showError(msg) {
    $("error").textContent = msg;
    $("error").hidden = false;
  }

  async function getJSON(url) {
    const r = await fetch(url);
    if (!r.ok) throw new Error(`${url}: ${r.status} ${await r.text()}`);
    return r.json();
  }

  async function start() {
    const info = await getJSON("/api/info");
    const rec = info.recursive || null;
    $("mosaic-summary").textContent =
      `${info.cols} × ${info.rows} cells, ${info.width} × ${info.height} px, ${info.distinct_tiles} distinct tiles` +
      (rec ? `; zoom in: every tile is a ${rec.grid} × ${rec.grid} mosaic of itself, ${rec.depth} level(s) deep` : "");
    const viewer = OpenSeadragon({
      id: "viewer",
      prefixUrl: "/osd/images/",
      tileSources: "/mosaic.dzi",
      showNavigator: true,
      maxZoomPixelRatio: 4,
      visibilityRatio: 0.5,
      gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
    });
    window.mosaicViewer = viewer;  // for tests and the console
    const cellW = info.width / info.cols, cellH = info.height / info.rows;
    const highlight = document.createElement("div");
    highlight.className = "cell-highlight";
    let shown = null, pending = 0;

    // How many times the cells on screen are subdivided: the server draws a cell as its
    // sub-mosaic on levels where it is wider than tile_px, and OpenSeadragon shows a level
    // whose pixels are at most 2 screen pixels.
    function visibleDepth() {
      if (!rec) return 0;
      let c = cellScreenPx() * (window.devicePixelRatio || 1) / 2, d = 0;
      while (c > rec.tile_px && d < rec.depth) { c /= rec.grid; d += 1; }
      return d;
    }

    function cellAt(pixel) {
      const p = viewer.viewport.viewerElementToImageCoordinates(pixel);
      let w = cellW, h = cellH;
      let col = Math.floor(p.x / w), row = Math.floor(p.y / h);
      if (col < 0 || row < 0 || col >= info.cols || row >= info.rows) return null;
      const path = [{ row, col }];
      let x0 = col * w, y0 = row * h;
      for (let d = visibleDepth(); d > 0; d--) {
        w /= rec.grid; h /= rec.grid;
        col = Math.min(rec.grid - 1, Math.max(0, Math.floor((p.x - x0) / w)));
        row = Math.min(rec.grid - 1, Math.max(0, Math.floor((p.y - y0) / h)));
        path.push({ row, col });
        x0 += col * w; y0 += row * h;
      }
      return { path, rect: [x0, y0, w, h] };
    }

    function cellScreenPx() {
      return cellW * viewer.viewport.viewportToImageZoom(viewer.viewport.getZoom(true));
    }

    function deepestScreenPx() {
      return cellScreenPx() / Math.pow(rec ? rec.grid : 1, visibleDepth());
    }

    async function show(cell) {
      const key = cell.path.map((p) => `${p.row},${p.col}`).join("/");
      if (key === shown) return;
      shown = key;
      const ticket = ++pending;
      let d;
      try {
        d = await getJSON("/api/cell/" + cell.path.map((p) => `${p.row}/${p.col}`).join("/"));
      } catch (e) {
        showError(String(e.message || e));
        return;
      }
      if (ticket !== pending) return;  // a newer cell was asked for meanwhile
      fill(d);
      const rect = viewer.viewport.imageToViewportRectangle(...cell.rect);
      if (viewer.getOverlayById(highlight)) viewer.updateOverlay(highlight, rect);
      else viewer.addOverlay({ element: highlight, location: rect });
      document.body.dataset.cell = key;
    }

    function fill(d) {
      $("hint").hidden = true;
      $("error").hidden = true;
      $("tile").hidden = false;
      $("tile-id").textContent = String(d.tile_id);
      $("cell-pos").textContent = `row ${d.row}, column ${d.col}` + (d.depth ? ` of tile ${d.path[d.depth - 1].tile_id}'s mosaic` : "");
      $("tile-path").textContent = ["mosaic"].concat((d.path || []).map(
        (p) => `tile ${p.tile_id} (row ${p.row}, column ${p.col})`)).join(" → ");
      $("tile-distance").textContent = `${d.distance.toFixed(2)} (Lab RMS)`;
      document.querySelectorAll(".tile-turn").forEach((el) => { el.hidden = !d.orientation; });
      $("tile-turn").textContent = d.orientation ? `${d.orientation.name} (the original is shown as stored)` : "";
      $("tile-origin").textContent = d.origin || "";
      $("tile-source").textContent = d.source || "";
      $("tile-size").textContent = d.width ? `original ${d.width} × ${d.height} px, ${d.format}` : "";
      const gen = d.generation;
      $("tile-generation").hidden = !gen;
      if (gen) {
        $("gen-prompt").textContent = gen.prompt;
        $("gen-seed").textContent = gen.seed === undefined ? "" : String(gen.seed);
        $("gen-model").textContent = gen.model || "";
        const made = gen.kind === "cell" && gen.cell;  // generated for this very cell, guided to it
        document.querySelectorAll(".gen-cell").forEach((el) => { el.hidden = !made; });
        $("gen-cell").textContent = made ? `cell ${gen.cell[0]}, ${gen.cell[1]} of run ${gen.run}: ` +
          `guidance w ${gen.guidance_weight}, AdaIN ${gen.adain}, ${gen.noise} noise, ${gen.scheduler}` : "";
      }
      $("tile-missing").hidden = !d.missing;
      $("tile-missing").textContent = d.missing || "";
      const img = $("tile-original");
      img.hidden = !!d.missing;
      if (!d.missing) {
        img.classList.toggle("small", Math.max(d.width || 0, d.height || 0) < 160);  // crisp when enlarged
        img.src = d.original_url;
      }
    }

    viewer.addHandler("canvas-click", (e) => {
      if (!e.quick) return;  // a drag, not a click
      const cell = cellAt(e.position);
      if (cell) show(cell);
    });

    let hoverTimer = 0;
    new OpenSeadragon.MouseTracker({
      element: viewer.canvas,
      moveHandler: (e) => {
        if (deepestScreenPx() < HOVER_CELL_PX) return;
        clearTimeout(hoverTimer);
        hoverTimer = setTimeout(() => {
          const cell = cellAt(e.position);
          if (cell) show(cell);
        }, 120);
      },
    });
  }

  start().catch((e) => showError(`could not load the mosaic: ${e.message || e}`));
})();
