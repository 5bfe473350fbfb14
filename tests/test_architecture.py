"""The shape of the code: stages import only downwards (the table in ARCHITECTURE.md), no
import cycles, the library never talks to the terminal, the CLI holds no logic."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "mosaicdb"

# A stage may import its own rank and below; ARCHITECTURE.md shows the same table.
RANK = {
    "_version": 0, "errors": 0,
    "units": 1, "orient": 1, "features": 1, "feature_kinds": 1, "color": 1, "evaluate": 1, "srgb": 1, "progress": 1,
    "io": 2,
    "assignment": 3, "index": 3,
    "store": 4,
    "match": 5,
    "render": 6,
    "printing": 7, "serve": 7, "generate": 7, "recursive": 7,
    "make": 8,
    "jobs": 9, "demo": 9, "autoencoder": 9, "batch": 9,
}


def modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        if p.name == "__main__.py":
            continue  # `python -m mosaicdb`: the program's entry point (it runs the CLI), not a stage
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Every import of a mosaicdb module by a mosaicdb module, at any depth (lazy ones too)."""
    graph = {}
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                for a in node.names:
                    deps.add(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


GRAPH = imports(modules())


def test_every_stage_has_a_rank():
    stages = {stage(m) for m in GRAPH} - {""}
    assert stages <= set(RANK), f"add {sorted(stages - set(RANK))} to RANK and to ARCHITECTURE.md"


def test_imports_only_go_down():
    up = [f"{a} -> {b}" for a, deps in GRAPH.items() for b in deps
          if stage(a) and stage(b) and stage(a) != stage(b) and RANK[stage(b)] > RANK[stage(a)]]
    assert not up, "imports from a lower stage back up: " + "; ".join(sorted(up))


def test_no_module_imports_the_package_root():
    assert not [a for a, deps in GRAPH.items() if "mosaicdb" in deps and a != "mosaicdb"]


def test_no_import_cycles():
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("pattern, why", [
    (r"^\s*(import click|from click)", "the library never imports click"),
    (r"(?<![\w.])print\(", "the library never prints"),
    (r"sys\.exit\(", "the library never exits"),
])
def test_library_does_not_talk_to_the_terminal(pattern, why):
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in PKG.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(pattern, line)]
    assert not hits, f"{why}: {hits}"


def test_only_the_entry_point_reaches_the_cli():
    hits = [str(p.relative_to(ROOT)) for p in PKG.rglob("*.py")
            if p.name != "__main__.py" and re.search(r"^\s*(import|from)\s+mosaicdb_cli", p.read_text(), re.M)]
    assert not hits, f"the library imports the CLI: {hits}"
    assert "from mosaicdb_cli.entry import main" in (PKG / "__main__.py").read_text()


def test_importing_the_library_loads_no_click():
    """Every library module imported together (not only the lines the regex above sees)."""
    import subprocess
    import sys
    names = sorted(m for m in modules() if m != "mosaicdb")
    code = ("import importlib, sys\n"
            f"for m in {names!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in ('click', 'mosaicdb_cli') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_one_progress_bar_factory():
    """Every bar goes through mosaicdb/progress.py, where the TTY and TQDM_DISABLE rule lives."""
    hits = [str(p.relative_to(ROOT)) for p in [*PKG.rglob("*.py"), *(ROOT / "mosaicdb_cli").glob("*.py")]
            if p.name != "progress.py" and re.search(r"^\s*(import tqdm|from tqdm)", p.read_text(), re.M)]
    assert not hits, f"make bars with mosaicdb.progress.progress_bar: {hits}"


def test_cli_holds_no_logic():
    """Commands parse, call the library, print: no arrays, images, SQL or files of their own."""
    banned = {"numpy", "PIL", "cv2", "sqlite3", "faiss", "tifffile", "shutil", "os"}
    hits = []
    for p in (ROOT / "mosaicdb_cli").glob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [(node.module or "").split(".")[0]]
            hits += [f"{p.name}: {n}" for n in names if n in banned]
    assert not hits, hits


def test_architecture_md_lists_every_stage():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    missing = [s for s in RANK if s != "_version" and f"`{s}" not in text]
    assert not missing, f"ARCHITECTURE.md does not mention {missing}"
