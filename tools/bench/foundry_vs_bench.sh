#!/usr/bin/env bash
# Issue 18 items 1-2 on one GPU, in one call: model_bench.py's bare `mpt_1b` step (triton,
# mp-compile-model) beside `foundry train model=mpt_1b hardware=1xh200` with its defaults (the
# one-GPU recipe: bf16 weights + MasterWeightAdamW, whole-model compile, the plan's micro-batch),
# on MDS prepared by `foundry data prep` from the standard library's .py files (NeoX tokenizer);
# then `foundry train model=mpt_7b hardware=1xh200` at a global batch of $SEVEN_BATCH.
#   tools/gpu-setup && tools/bench/foundry_vs_bench.sh      (output under $OUT)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-tools/bench/out}; mkdir -p "$OUT"
DATA=${DATA:-tools/bench/out/shared-data}
PY=${PYTHON:-python3}
MB=${MB:-16}                 # mpt_1b: the bench's micro-batch = foundry's global batch (one step)
SEVEN_BATCH=${SEVEN_BATCH:-24}
export MPT_TRITON_AUTOTUNE=0 PYTHONUNBUFFERED=1
work=$(mktemp -d)
stdlib=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['stdlib'])")
timeout 150 "$PY" tools/bench/model_bench.py --models mpt_1b --backends triton \
  --modes mp-compile-model --baselines none --micro-batch "$MB" --steps 10 --time-budget 130 \
  --json "$OUT/model_bench_mpt_1b.json" 2>&1 | tail -6
timeout 80 "$PY" -m foundry data prep "inputs=[$stdlib]" 'include=["*.py"]' "out=$work/mds" \
  "tokenizer=$DATA/tokenizers/gpt-neox-20b" max_seq_len=2048 progress=false 2>&1 | tail -2
summary() {  # median tokens/s and MFU after the first $2 steps (the window skips step 1), peak memory
  "$PY" - "$1" "$2" <<'PYEOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"metrics"' in l]
m = [r["metrics"] for r in rows if r.get("kind") == "metrics" and r["step"] > int(sys.argv[2])]
tps = [x["throughput/tokens_per_sec"] for x in m if "throughput/tokens_per_sec" in x]
secs = sorted(x["time/batch_seconds"] for x in m if "time/batch_seconds" in x)
mfu = [x["throughput/device/mfu"] for x in m if "throughput/device/mfu" in x]
peak = [x["memory/peak_allocated"] for x in m if "memory/peak_allocated" in x]
first = [r["metrics"]["loss/train/total"] for r in rows if r.get("step") == 1 and "loss/train/total" in r["metrics"]]
print(f"  steps > {sys.argv[2]}: median tokens/s {statistics.median(tps):,.0f}, MFU {statistics.median(mfu):.1%},"
      f" median step {statistics.median(secs):.4f} s, peak {max(peak) if peak else float('nan'):.1f} GiB, first loss {first[0] if first else float('nan'):.3f}, {len(tps)} steps" if tps else "  no throughput logged")
PYEOF
}
train() {  # name, seconds, skip, overrides...
  local name=$1 limit=$2 skip=$3; shift 3
  timeout "$limit" "$PY" -m foundry train hardware=1xh200 "data.sources.main.local=$work/mds" \
    log.console_every=1 "log.log_dir=$work/run_$name" "$@" > "$OUT/foundry_train_$name.log" 2>&1
  echo "foundry train $name: exit $? ($*)"
  grep -E "micro-batch|Error|error" "$OUT/foundry_train_$name.log" | grep -v "^#" | tail -3
  summary "$work/run_$name/metrics.jsonl" "$skip"
}
# mpt_1b saves its checkpoint at the end (the cost the issue counts); mpt_7b's (93 GB with its
# optimizer state) would not fit this machine's disk: no save_folder
train mpt_1b 170 1 model=mpt_1b max_duration=30ba "global_train_batch_size=$MB" scheduler.warmup=5ba \
  "save_folder=$work/run_mpt_1b" save_interval=1000ba
train mpt_7b 200 1 model=mpt_7b max_duration=12ba "global_train_batch_size=$SEVEN_BATCH" \
  scheduler.warmup=2ba
