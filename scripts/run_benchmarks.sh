#!/usr/bin/env bash
# Run every benchmark in benchmarks/ (JSON to benchmarks/results/, or results/quick/ with --quick).
#
#   scripts/run_benchmarks.sh            # the full runs the README reports (an hour or more on 2 cores)
#   scripts/run_benchmarks.sh --quick    # small sizes, minutes: checks that every benchmark runs
#   scripts/run_benchmarks.sh --dry-run  # print the commands only
#   PYTHON=.venv/bin/python scripts/run_benchmarks.sh bench_render bench_print   # some of them
#
# Each benchmark measures its own baseline in the same run and records os.getloadavg(): compare
# ratios between machines, not wall times. bench_generate* and bench_automosaic need the `gen` extra (torch); they are
# skipped with a note when torch is missing. Exit status: 1 if any benchmark failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
quick=0 dry=0 only=()
for a in "$@"; do
  case "$a" in
    --quick) quick=1 ;;
    --dry-run) dry=1 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    bench_*) only+=("${a%.py}") ;;
    *) echo "run_benchmarks: unknown argument $a (try --help)" >&2; exit 2 ;;
  esac
done

# in the pipeline's order; quick-mode arguments of each (every benchmarks/bench_*.py must be here)
ORDER=(bench_ingest bench_index bench_search_db bench_tuner_queries bench_scan bench_match bench_match_vs_main bench_quality bench_unique bench_many bench_render bench_print bench_print_codecs bench_serve bench_generate bench_generative bench_automosaic)
declare -A QUICK=(
  [bench_ingest]="--limit 5000"
  [bench_index]="--limit 10000 --big-pool 0 --queries 8192 --kodak-queries 1024"
  [bench_match]="--grid 64x64 --small-grid 32x32 --bf-cells 256 --naive-cells 4 --repeat 1"
  [bench_render]="--tiles 300 --sizes 4096 8192"
  [bench_print]="--tiles 300 --scale 0.1 --repeat 1"
  [bench_print_codecs]="--quick"
  [bench_generate]="--palette-size 4 --per-colour 2 --repeat 1"
  [bench_unique]="--quick"
  [bench_many]="--quick"
  [bench_search_db]="--quick"
  [bench_tuner_queries]="--quick"
  [bench_scan]="--quick"
  [bench_match_vs_main]="--quick"
  [bench_quality]="--quick"
  [bench_generative]="--quick"
  [bench_serve]="--quick"
  [bench_automosaic]="--quick"
)
in_list() {  # in_list WORD LIST...
  local w=$1; shift
  for x in "$@"; do [ "$x" = "$w" ] && return 0; done
  return 1
}

results=benchmarks/results
[ "$quick" = 1 ] && results=benchmarks/results/quick
mkdir -p "$results"

for f in benchmarks/bench_*.py; do
  name=$(basename "$f" .py)
  if [ -z "${QUICK[$name]+x}" ] || ! in_list "$name" "${ORDER[@]}"; then
    echo "run_benchmarks: $name is not in ORDER and QUICK in $0: add it there" >&2; exit 2
  fi
done

failed=()
for name in "${ORDER[@]}"; do
  f=benchmarks/$name.py
  if [ ${#only[@]} -gt 0 ] && ! in_list "$name" "${only[@]}"; then continue; fi
  args=(--out "$results/$name.json")
  [ "$quick" = 1 ] && read -ra extra <<< "${QUICK[$name]}" && args+=("${extra[@]}")
  echo "== $name: $PYTHON $f ${args[*]}"
  [ "$dry" = 1 ] && continue
  if [[ "$name" = bench_generat* || "$name" = bench_automosaic ]] && ! "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "   skipped: torch is not installed (the gen extra: make gen-deps)"; continue
  fi
  start=$(date +%s)
  if "$PYTHON" "$f" "${args[@]}"; then
    echo "   done in $(( $(date +%s) - start )) s -> $results/$name.json"
  else
    echo "   FAILED ($name)" >&2; failed+=("$name")
  fi
done
[ ${#failed[@]} -eq 0 ] || { echo "run_benchmarks: failed: ${failed[*]}" >&2; exit 1; }
