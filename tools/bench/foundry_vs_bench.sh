#!/usr/bin/env bash
# Issue 18 item 1 on one GPU: `foundry train model=mpt_1b hardware=1xh200` (its defaults, on MDS
# prepared by `foundry data prep` from the standard library's .py files with the NeoX tokenizer)
# beside model_bench.py's bare `mpt_1b` step (triton, mp-compile-model), in the same call.
#   tools/gpu-setup && tools/bench/foundry_vs_bench.sh      (output under $OUT)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-tools/bench/out}; mkdir -p "$OUT"
DATA=${DATA:-tools/bench/out/shared-data}
PY=${PYTHON:-python3}
export MPT_TRITON_AUTOTUNE=0 PYTHONUNBUFFERED=1
work=$(mktemp -d)
stdlib=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['stdlib'])")
timeout 165 "$PY" tools/bench/model_bench.py --models mpt_1b --backends triton \
  --modes mp-compile-model --baselines none --micro-batch 8 --steps 10 --time-budget 140 \
  --json "$OUT/model_bench_mpt_1b.json" 2>&1 | tail -8
timeout 80 "$PY" -m foundry data prep "inputs=[$stdlib]" 'include=["*.py"]' "out=$work/mds" \
  "tokenizer=$DATA/tokenizers/gpt-neox-20b" max_seq_len=2048 progress=false 2>&1 | tail -3
for extra in "" "parallelism.compile=true"; do
  name=${extra:-defaults}; name=${name//[^a-z]/_}
  timeout 140 "$PY" -m foundry train model=mpt_1b hardware=1xh200 "data.sources.main.local=$work/mds" \
    max_duration=25ba global_train_batch_size=8 device_train_microbatch_size=8 log.console_every=10 \
    "save_folder=$work/run_$name" save_interval=1000ba $extra > "$OUT/foundry_train_$name.log" 2>&1
  echo "foundry train $name: exit $?"
  grep -E "^\[step|error|Error" "$OUT/foundry_train_$name.log" | tail -4
  "$PY" - "$work/run_$name/metrics.jsonl" <<'PYEOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"metrics"' in l]
m = [r["metrics"] for r in rows if r.get("kind") == "metrics" and r["step"] > 10]
tps = [x["throughput/tokens_per_sec"] for x in m if "throughput/tokens_per_sec" in x]
mfu = [x["throughput/device/mfu"] for x in m if "throughput/device/mfu" in x]
print(f"  steps 11-25: median tokens/s {statistics.median(tps):,.0f}, MFU {statistics.median(mfu):.1%}" if tps else "  no throughput logged")
PYEOF
done
