#!/usr/bin/env bash
# The device command for issue 5's GPU work on a lent H100, after tools/gpu-setup: the Triton
# kernel's GPU tests, then tools/bench/attention_bench.py, then tools/bench/model_bench.py. Each
# step has a time limit, tees its log into $OUT, and never stops the steps after it.
#
#   tools/gpu-setup && tools/bench/gpu_run.sh tests attention     # one call (~8 min at most)
#   tools/gpu-setup && tools/bench/gpu_run.sh model               # a second call (~9 min)
#   ATTN_ARGS="--shapes 8x2048x16x128 --backends triton,flex" tools/bench/gpu_run.sh attention
#
#   tools/gpu-setup && tools/bench/gpu_run.sh target              # the part-7 target, 2 rounds
#   tools/gpu-setup && tools/bench/gpu_run.sh rows                # mpt_125m/350m x every backend
#   tools/gpu-setup && tools/bench/gpu_run.sh eval foundry        # evalkit mpt_1b seed table;
#                                                                 # foundry prep + train on 1 GPU
#
# Steps (arguments, in any order; none = tests, attention, model): tests, attention, model,
# target (mpt_1b triton vs the compiled GPT + FlexAttention in both precision recipes, --repeat 2
# --steps 20: model_bench with MODEL_ARGS replaced), rows (mpt_125m and mpt_350m with every
# backend in mp-compile-model).
# Extra arguments per step: TEST_ARGS, ATTN_ARGS, MODEL_ARGS. GPU_TESTS: the test files (default
# packages/mpt/tests/test_flash_alibi_gpu.py and composer-lite's test_optim.py; test_model_gpu.py
# can be added).
# Limits in seconds: T_TESTS (150), T_ATTN (360), T_MODEL (540), all within GPU_RUN_BUDGET (530:
# a device call runs 600 s at most, gpu-setup included). A step gets at most what is left of the
# budget, and each benchmark is told to stop starting variants 20-45 s before its limit
# (--time-budget), so its table and JSON are written in time. A step with under 60 s left is
# skipped. Output under $OUT (tools/bench/out without it): gpu_run.log, tests.log,
# attention_bench.log, attention_bench.json, model_bench.log, model_bench.json.
set -uo pipefail
cd "$(dirname "$0")/../.."
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
export NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
OUT=${OUT:-tools/bench/out}
mkdir -p "$OUT"
export OUT
PY=${PYTHON:-python3}
start=$SECONDS
budget=${GPU_RUN_BUDGET:-530}

steps=("$@")
(( ${#steps[@]} )) || steps=(tests attention model)
for s in "${steps[@]}"; do
  case $s in tests|attention|model|target|rows|eval|foundry) ;; *) echo "gpu_run: unknown step '$s' (tests, attention, model, target, rows, eval, foundry)" >&2; exit 2 ;; esac
done

log() { echo "$*" | tee -a "$OUT/gpu_run.log"; }
DEFAULT_TESTS="packages/mpt/tests/test_flash_alibi_gpu.py packages/composer-lite/tests/test_optim.py"
summary=()

# run_step NAME LIMIT COMMAND...: runs under `timeout`, output to the console and $OUT/NAME.log.
run_step() {
  local name=$1 limit=$2 left rc
  shift 2
  left=$(( budget - (SECONDS - start) ))
  (( limit > left )) && limit=$left
  if (( limit < 60 )); then
    log "== $name: skipped, ${left}s left of the ${budget}s budget"
    summary+=("$name: skipped (budget)")
    return
  fi
  log "== $name (limit ${limit}s): $*"
  timeout -k 20 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  case $rc in 0) ;; 124|137) rc="$rc (time limit)" ;; esac
  log "== $name: exit $rc after $(( SECONDS - start ))s in all"
  summary+=("$name: exit $rc")
}

# limit_for STEP_LIMIT: what the step will get; budget_for LIMIT: the benchmark's --time-budget,
# leaving it time to stop a running variant and write its table before `timeout` strikes.
limit_for() {
  local left=$(( budget - (SECONDS - start) ))
  (( $1 < left )) && echo "$1" || echo "$left"
}
budget_for() {
  local slack=$(( $1 / 4 ))
  (( slack > 45 )) && slack=45
  (( slack < 20 )) && slack=20
  echo $(( $1 - slack ))
}

{ date; nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv; } 2>&1 | tee -a "$OUT/gpu_run.log"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$OUT/gpu_run.log"

for s in "${steps[@]}"; do
  case $s in
    tests)
      files=()
      for f in ${GPU_TESTS:-$DEFAULT_TESTS}; do [[ -e $f ]] && files+=("$f"); done
      if (( ${#files[@]} )); then
        # shellcheck disable=SC2086
        run_step tests "${T_TESTS:-150}" "$PY" -m pytest "${files[@]}" -q -p no:cacheprovider ${TEST_ARGS:-}
      else
        log "== tests: ${GPU_TESTS:-$DEFAULT_TESTS} not present; skipped"
        summary+=("tests: not present")
      fi
      ;;
    attention)
      lim=$(limit_for "${T_ATTN:-360}")
      # shellcheck disable=SC2086
      TRITON_PRINT_AUTOTUNING=1 run_step attention_bench "$lim" "$PY" tools/bench/attention_bench.py \
        --time-budget "$(budget_for "$lim")" ${ATTN_ARGS:-}
      ;;
    model)
      lim=$(limit_for "${T_MODEL:-540}")
      # shellcheck disable=SC2086
      run_step model_bench "$lim" "$PY" tools/bench/model_bench.py \
        --time-budget "$(budget_for "$lim")" ${MODEL_ARGS:-}
      ;;
    target)
      lim=$(limit_for "${T_MODEL:-540}")
      MPT_TRITON_AUTOTUNE=0 run_step model_bench_target "$lim" "$PY" tools/bench/model_bench.py \
        --time-budget "$(budget_for "$lim")" --models mpt_1b --backends triton \
        --modes mp-compile-model --baselines gpt_flex --baseline-modes compile,mp-compile \
        --repeat 2 --steps 20 --json "$OUT/model_bench_target.json"
      ;;
    rows)
      lim=$(limit_for "${T_MODEL:-540}")
      MPT_TRITON_AUTOTUNE=0 run_step model_bench_rows "$lim" "$PY" tools/bench/model_bench.py \
        --time-budget "$(budget_for "$lim")" --models mpt_125m,mpt_350m \
        --backends triton,flex,sdpa,torch --modes mp-compile-model --baselines none \
        --json "$OUT/model_bench_rows.json"
      ;;
    eval)
      # evalkit alone, mpt_1b (random weights, bf16, triton) over the seed table's twelve tasks;
      # DATA: a copy of ../shared/data carried along (the machine has no ../shared)
      data=${DATA:-tools/bench/out/shared-data}
      PYTHONPATH=tools/bench run_step eval_seed_table "$(limit_for "${T_EVAL:-300}")" \
        "$PY" -m evalkit --model-factory eval_models:mpt_1b \
        --tokenizer "$data/tokenizers/gpt-neox-20b/tokenizer.json" \
        --tasks "$data/eval/yamls/tasks_seed_table.yaml" --data-root "$data/eval/icl" \
        --gauntlet "$data/eval/yamls/eval_gauntlet_v0.3.yaml" --batch-size 64 \
        --max-batch-tokens 131072 --device cuda --no-progress --out "$OUT/eval_seed_table" \
        ${EVAL_ARGS:-}
      ;;
    foundry)
      # foundry's own path on one GPU: data prep (standard-library source, the NeoX tokenizer),
      # then `foundry train model=mpt_125m hardware=1xh200` for a few dozen batches
      data=${DATA:-tools/bench/out/shared-data}
      work=$(mktemp -d)
      stdlib=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['stdlib'])")
      run_step foundry_prep 120 "$PY" -m foundry data prep "inputs=[$stdlib]" 'include=["*.py"]' \
        "out=$work/mds" "tokenizer=$data/tokenizers/gpt-neox-20b" max_seq_len=2048 progress=false
      run_step foundry_train "$(limit_for "${T_FOUNDRY:-240}")" "$PY" -m foundry train \
        model=mpt_125m hardware=1xh200 "data.sources.main.local=$work/mds" max_duration=40ba \
        global_train_batch_size=16 log.console_every=10 "save_folder=$work/run" save_interval=40ba \
        ${FOUNDRY_ARGS:-}
      ;;
  esac
done
log "== gpu_run done in $(( SECONDS - start ))s: ${summary[*]}"
