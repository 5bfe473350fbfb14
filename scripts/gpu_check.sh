#!/usr/bin/env bash
# The GPU paths end to end, with timings, so the first CUDA machine gives numbers in minutes:
#   1. FAISS search on the GPU against the CPU (same index, same queries: time and agreement);
#   2. `mosaic make --device cuda` against `--device cpu` on the demo database;
#   3. `mosaic generate tiles --device cuda` with a model folder (--model DIR, e.g. SDXL-Turbo
#      from `hf download stabilityai/sdxl-turbo --local-dir sdxl-turbo`; without one, the tiny
#      offline pipeline, which checks the path but says nothing of SDXL's speed).
# Needs: an NVIDIA GPU, faiss-gpu in place of faiss-cpu (README, "GPUs"), torch with CUDA and the
# `gen` extra. Without a GPU it stops at once, exit 1, saying what is missing.
#
#   scripts/gpu_check.sh [--model DIR] [--work DIR] [--pool N]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
model="" work="" pool=500000
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --pool) pool=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done

# ---- fail fast: is there a GPU that faiss and torch can use? ----------------------------------
missing=()
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  missing+=("nvidia-smi finds no NVIDIA GPU (no driver or no device)")
fi
ngpu=$("$PYTHON" -c "import faiss; print(faiss.get_num_gpus())" 2>/dev/null || echo "?")
if [ "$ngpu" = "?" ]; then missing+=("faiss does not import with $PYTHON")
elif [ "$ngpu" = 0 ]; then missing+=("faiss sees 0 GPUs (faiss-cpu is installed, or CUDA sees no device: swap in faiss-gpu-cu12, see README 'GPUs')"); fi
cuda=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo "?")
if [ "$cuda" = "?" ]; then missing+=("torch is not installed (the gen extra, with a CUDA build of torch)")
elif [ "$cuda" = 0 ]; then missing+=("torch.cuda.is_available() is False (a CPU-only torch build, or no device)"); fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "gpu_check: no GPU to check on this machine:" >&2
  for m in "${missing[@]}"; do echo "  - $m" >&2; done
  exit 1
fi

work=${work:-$(mktemp -d -t mosaicdb-gpu-XXXX)}
mkdir -p "$work"
echo "gpu_check: working in $work"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
declare -a report

timed() {  # timed LABEL CMD...: run, keep the wall time for the summary
  local label=$1; shift
  local t0=$EPOCHREALTIME
  "$@"
  report+=("$(awk -v a="$t0" -v b="$EPOCHREALTIME" -v l="$label" 'BEGIN { printf "%-44s %8.2f s", l, b - a }')")
}

# ---- 1. FAISS: GPU against CPU ---------------------------------------------------------------
"$PYTHON" - "$pool" <<'PY'
import sys, time
import faiss, numpy as np
n, d, nq, k = int(sys.argv[1]), 51, 65536, 16
rng = np.random.default_rng(0)
xb = rng.standard_normal((n, d), dtype=np.float32)
xq = (xb[rng.integers(0, n, nq)] + 0.1 * rng.standard_normal((nq, d), dtype=np.float32)).astype(np.float32)
for kind in ("flat", "ivf"):
    if kind == "flat":
        cpu = faiss.IndexFlatL2(d)
    else:
        nlist = 4096
        cpu = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
        cpu.train(xb[rng.choice(n, min(n, 64 * nlist), replace=False)])
        cpu.nprobe = 32
    cpu.add(xb)
    t = time.perf_counter(); dc, ic = cpu.search(xq, k); t_cpu = time.perf_counter() - t
    gpu = faiss.index_cpu_to_all_gpus(cpu)
    if gpu.ntotal != cpu.ntotal:
        sys.exit(f"gpu_check: the GPU index holds {gpu.ntotal} vectors, not {cpu.ntotal}")
    gpu.search(xq[:1024], k)  # warm-up
    t = time.perf_counter(); dg, ig = gpu.search(xq, k); t_gpu = time.perf_counter() - t
    agree = float((ic[:, 0] == ig[:, 0]).mean())
    print(f"faiss {kind:4s} {n:,} x {d}, {nq:,} queries, k={k}: CPU {t_cpu:.2f} s, GPU {t_gpu:.3f} s "
          f"({t_cpu / t_gpu:.0f}x), top-1 agreement {agree:.4f}")
PY

# ---- 2. matching on cuda against cpu ---------------------------------------------------------
mosaic=("$PYTHON" -m mosaicdb)
timed "demo database (CPU)" "${mosaic[@]}" -q demo --out "$work/demo" --tiles 3000 >/dev/null
target="$work/demo/target-astronaut.png"   # written by mosaic demo
for dev in cpu cuda; do
  timed "make --grid 256 --device $dev" "${mosaic[@]}" -q make --db "$work/demo/tiles.db" "$target" \
      --out "$work/make-$dev.jpg" --grid 256 --tile-px 8 --device "$dev"
done

# ---- 3. generation on cuda -------------------------------------------------------------------
if [ -z "$model" ]; then
  model="$work/tiny-sdxl"
  "${mosaic[@]}" generate tiny-model "$model" --force >/dev/null
  echo "gpu_check: no --model given: the tiny offline pipeline checks the cuda path (not SDXL's speed)"
  gen=(--style flowers --palette-size 8 --per-colour 4 --batch 8 --max-detail 100 --max-delta-e 200)
else
  gen=(--style flowers --palette-size 8 --per-colour 4 --batch 16)
fi
timed "generate tiles --device cuda (32 tiles)" "${mosaic[@]}" -q generate tiles "$work/gen.db" --model "$model" \
    --device cuda "${gen[@]}" --json > "$work/generate.json"
"$PYTHON" -c "import json,sys; r=json.load(open(sys.argv[1])); print('generate:', r['accepted'], 'tiles,', \
round(r['tiles_per_s'], 2), 'tiles/s; seconds', r['seconds'])" "$work/generate.json"

echo
echo "gpu_check: timings (wall)"
printf '  %s\n' "${report[@]}"
echo "gpu_check: outputs and JSON in $work"
