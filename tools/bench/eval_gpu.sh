#!/usr/bin/env bash
# Where evalkit's time goes with mpt_1b on one GPU (issue 18, item 4): the seed table's twelve
# tasks with the gauntlet, each run in a fresh process, and the kernels Triton compiled for it.
#
#   tools/gpu-setup >/dev/null && tools/bench/eval_gpu.sh old:cold:notune new:cold new:warm
#
# A run is MPT:CACHE[:notune].
#   MPT    new: this checkout's packages; old: the packages/*/src folders under OLD (default
#          tools/bench/out/old, e.g. `git archive <commit> packages/mpt/src packages/evalkit/src`
#          unpacked there), put first on PYTHONPATH
#   CACHE  cold: an empty Triton cache of the run's own (a fresh machine); warm: the cache the
#          last cold run of the same MPT filled (a second evaluation on the same machine)
#   notune MPT_TRITON_AUTOTUNE=0 (without it: mpt's default, autotuning on)
# Env: LIMIT (200: the first N examples of each task), T_RUN (300: seconds per run at most),
# DATA (tools/bench/out/shared-data: a copy of ../shared/data; the machine has no ../shared).
# Output under $OUT: <run>.log, <run>/results.json, <run>.kernels (compiled kernels per name
# after the run, from the cache's .json metadata) and summary.tsv (run, wall s, exit code,
# examples, evaluation s, examples/s, compiled kernels).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-tools/bench/out}
PY=${PYTHON:-python3}
DATA=${DATA:-tools/bench/out/shared-data}
OLD=${OLD:-tools/bench/out/old}
LIMIT=${LIMIT:-200}
mkdir -p "$OUT"
caches=$(mktemp -d)
printf 'run\twall_s\trc\texamples\teval_s\texamples_per_s\tcompiled_kernels\n' >"$OUT/summary.tsv"

for run in "$@"; do
  IFS=: read -r which cache tune <<<"$run"
  case $which in new) path=tools/bench ;;
    old) path=$(printf '%s:' "$(realpath "$OLD")"/packages/*/src)tools/bench ;;
    *) echo "eval_gpu: unknown mpt '$which' in '$run' (new, old)" >&2; exit 2 ;; esac
  case $cache in
    cold) rm -rf "$caches/$which"; mkdir -p "$caches/$which" ;;
    warm) [[ -d $caches/$which ]] || { echo "eval_gpu: '$run' needs a cold $which run first" >&2; exit 2; } ;;
    *) echo "eval_gpu: unknown cache '$cache' in '$run' (cold, warm)" >&2; exit 2 ;;
  esac
  name=${run//:/_}
  env=(TRITON_CACHE_DIR="$caches/$which" PYTHONPATH="$path")
  [[ ${tune:-} == notune ]] && env+=(MPT_TRITON_AUTOTUNE=0)
  start=$SECONDS
  env "${env[@]}" timeout "${T_RUN:-300}" "$PY" -c "import mpt, evalkit; print('from', mpt.__file__, evalkit.__file__)" \
    >"$OUT/$name.log" 2>&1
  env "${env[@]}" timeout "${T_RUN:-300}" "$PY" -m evalkit --model-factory eval_models:mpt_1b \
    --tokenizer "$DATA/tokenizers/gpt-neox-20b/tokenizer.json" \
    --tasks "$DATA/eval/yamls/tasks_seed_table.yaml" --data-root "$DATA/eval/icl" \
    --gauntlet "$DATA/eval/yamls/eval_gauntlet_v0.3.yaml" --batch-size 64 \
    --max-batch-tokens 131072 --device cuda --no-progress --limit "$LIMIT" --out "$OUT/$name" \
    >>"$OUT/$name.log" 2>&1
  rc=$?
  wall=$((SECONDS - start))
  find "$caches/$which" -name '*.json' ! -name '__grp__*' -exec "$PY" -c \
    'import json, sys; [print(json.load(open(p))["name"]) for p in sys.argv[1:]]' {} + |
    sort | uniq -c | sort -rn >"$OUT/$name.kernels"
  "$PY" - "$OUT/$name/results.json" "$run" "$wall" "$rc" "$OUT/$name.kernels" \
    >>"$OUT/summary.tsv" <<'EOF'
import json, os, sys
path, run, wall, rc, kernels = sys.argv[1:]
n = sum(int(line.split()[0]) for line in open(kernels) if line.strip())
if os.path.exists(path):
    r = json.load(open(path))
    ex = sum(t["n_examples"] for t in r["tasks"].values())
    print(f"{run}\t{wall}\t{rc}\t{ex}\t{r['seconds']:.1f}\t{ex / r['seconds']:.1f}\t{n}")
    for label, t in r["tasks"].items():
        print(f"#  {run} {label}: {t['n_examples']} examples in {t['seconds']:.1f} s", file=sys.stderr)
else:
    print(f"{run}\t{wall}\t{rc}\t-\t-\t-\t{n}")
EOF
  echo "eval_gpu: $run done in ${wall}s (exit $rc)"
done
cat "$OUT/summary.tsv"
for f in "$OUT"/*.kernels; do echo "== $f"; cat "$f"; done
