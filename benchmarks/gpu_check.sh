#!/usr/bin/env bash
# Every GPU measurement of issue 9 in ONE device call (<= 8 minutes, compiles included):
# trainer vs plain PyTorch (gpt2-124m b32, gpt2-350m b16, seq 1024), the lever table, llama-1.1b
# trainer MFU at seq 2048, encoder-decoders through the trainer, the model benchmark's
# activation-checkpointing / document-masking runs, and data_tools scaling (1 vs 16 workers on a
# >= 200 MB corpus) on the host's CPUs. Prints one summary table; writes 2 files under $OUT
# (gpu_check.log: every step's output; gpu_check.json: the summary).
#
#   bash benchmarks/gpu_check.sh            # on the lent GPU; run(carry=[".whl"]) — see docs/performance.md
#   DRY=1 bash benchmarks/gpu_check.sh      # every step on CPU with tiny sizes (a few minutes)
#
# Environment: OUT (default ./gpu_check_out), PYTHON (default python3), BUDGET_S (seconds for
# all steps, default 440; a step that would not fit in what is left is skipped, not started),
# ONLY / SKIP (space-separated step names), MT_EXTRA (extra flags for model_throughput.py, e.g.
# the activation-checkpointing options), EXTRA_LEVERS (extra --lever NAME:KEY=VAL,... specs).
# A failing or timed-out step is logged and the script goes on; the exit code is 0 unless the
# set-up itself failed.
set -u
cd "$(dirname "$0")/.."
DRY=${DRY:-0}
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-$PWD/gpu_check_out}
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
LOG="$OUT/gpu_check.log"
RESULTS="$WORK/results.jsonl"
mkdir -p "$OUT"
: > "$LOG"
: > "$RESULTS"
START=$(date +%s)
log() { echo "[gpu_check +$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }

# ---- set-up: DeepSpeed wheels, one-process rank variables, W&B off ------------------------
export WANDB_MODE=disabled RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1
export MASTER_PORT=${MASTER_PORT:-29511} PYTHONPATH="$PWD:${PYTHONPATH:-}"
export TORCHINDUCTOR_CACHE_DIR="$WORK/inductor"  # fresh, but shared by all steps (FX cache)
if ! "$PYTHON" -c "import deepspeed, pydantic, hjson, yaml, tqdm" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    log "installing .whl/*.whl to /tmp/site"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target /tmp/site .whl/*.whl >>"$LOG" 2>&1 || { log "FATAL: wheel install failed"; exit 1; }
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
  else
    log "FATAL: deepspeed is not importable and there is no .whl/ (see docs/performance.md)"
    exit 1
  fi
fi
if [ "$DRY" = 1 ]; then
  BUDGET_S=${BUDGET_S:-1200}
  export CUDA_VISIBLE_DEVICES="" DS_ACCELERATOR=cpu
else
  BUDGET_S=${BUDGET_S:-440}
fi
{ "$PYTHON" -c "import torch, deepspeed, sys; print('python', sys.version.split()[0], 'torch',
torch.__version__, 'deepspeed', deepspeed.__version__, 'cuda', torch.cuda.is_available())"
  nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
  echo "cores: $(nproc)"; } >>"$LOG" 2>&1
log "DRY=$DRY budget ${BUDGET_S}s OUT=$OUT"

# ---- steps --------------------------------------------------------------------------------
wanted() {  # ONLY / SKIP filters
  local name=$1
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return 1; fi
  if [ -n "${SKIP:-}" ] && [[ " $SKIP " == *" $name "* ]]; then return 1; fi
  return 0
}

record() {  # record NAME STATUS SECONDS STDOUT_FILE
  "$PYTHON" - "$1" "$2" "$3" "$4" >>"$RESULTS" <<'EOF'
import json, sys
name, status, seconds, path = sys.argv[1:5]
result = None
for line in reversed(open(path, errors="replace").read().splitlines()):
    if line.startswith("{"):
        try:
            result = json.loads(line)
        except ValueError:
            pass
        break
print(json.dumps({"step": name, "status": status, "seconds": int(seconds), "result": result}))
EOF
}

RESERVE=0  # seconds of the budget kept for the last step (the 16-worker shard run)
PIN=()     # taskset for GPU steps while the 1-worker shard run owns core 0
step() {  # step NAME NEED_S TIMEOUT_S CMD...: run if wanted and NEED_S still fits the budget
  local name=$1 need=$2 limit=$3; shift 3
  wanted "$name" || return 0
  local left=$(( BUDGET_S - RESERVE - ($(date +%s) - START) ))
  if [ "$left" -lt "$need" ]; then
    log "skip $name: needs ~${need}s, ${left}s of the budget left"
    echo '{}' > "$WORK/$name.out"; record "$name" "skipped (budget)" 0 "$WORK/$name.out"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  log "run  $name (limit ${limit}s): $*"
  local t0=$(date +%s) rc=0
  timeout --signal=TERM --kill-after=15 "$limit" "${PIN[@]}" "$@" >"$WORK/$name.out" 2>&1 || rc=$?
  local dt=$(( $(date +%s) - t0 )) status=ok
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && status="timeout after ${limit}s"
  [ "$rc" != 0 ] && [ "$status" = ok ] && status="failed (exit $rc)"
  { echo "----- $name: $status in ${dt}s"; cat "$WORK/$name.out"; } >>"$LOG"
  log "done $name: $status in ${dt}s"
  record "$name" "$status" "$dt" "$WORK/$name.out"
}

TT=(benchmarks/train_throughput.py)
MT=(benchmarks/model_throughput.py)
if [ "$DRY" = 1 ]; then
  SMALL=(--model gpt-tiny --batch 4 --seq-len 64 --steps 2 --rounds 1 --warmup 1 --no-compile)
  MID=(--model llama-tiny --batch 2 --seq-len 64 --steps 2 --rounds 1 --warmup 1 --no-compile)
  BIG=(--model llama-tiny --batch 2 --seq-len 64 --steps 2 --rounds 1 --warmup 1 --no-compile)
  ENC1=(--model transformer-tiny --batch 2 --seq-len 32 --steps 2 --rounds 1 --warmup 1 --no-compile)
  ENC2=(--model t5-tiny --batch 2 --seq-len 32 --steps 2 --rounds 1 --warmup 1 --no-compile)
  MT_RUN=(--runs llama-tiny:2 --seq-len 64 --dtype fp32 --steps 1 --warmup 1)
  LEVERS=defaults,bf16,old-defaults-bf16,compile-scopes
  DT_MB=2; DT_WORKERS=2
else
  SMALL=(--model gpt2-124m --batch 32 --seq-len 1024 --zero-stage 2 --steps 10 --rounds 3)
  MID=(--model gpt2-350m --batch 16 --seq-len 1024 --zero-stage 2 --steps 6 --rounds 3)
  # ZeRO-0: 16 bytes/parameter like the plain loop (ZeRO-1/2 keep a 4th fp32 copy)
  BIG=(--model llama-1.1b --batch 8 --seq-len 2048 --zero-stage 0 --steps 4 --rounds 2 --no-plain)
  ENC1=(--model transformer-base --batch 64 --seq-len 512 --zero-stage 2 --steps 6 --rounds 2 --no-plain)
  ENC2=(--model t5-base --batch 32 --seq-len 512 --zero-stage 2 --steps 6 --rounds 2 --no-plain)
  MT_RUN=(--runs llama-1.1b:8 --seq-len 2048 --dtype bf16 --compile --steps 4 --warmup 2)
  LEVERS=bf16,old-defaults-bf16,zero0,sync-every-step,compile-scopes
  DT_MB=200; DT_WORKERS=16
fi
EXTRA=()
for spec in ${EXTRA_LEVERS:-}; do EXTRA+=(--lever "$spec"); done

# data_tools, 1 worker, in the background on one core from the start (minutes on 200 MB);
# the many-worker run comes last, when the GPU steps no longer use the CPUs.
DT_PID=""
if wanted shard_scaling; then
  log "start shard_w1 in the background (${DT_MB} MB corpus)"
  # its own process group (setsid), so that it can be stopped with all its children
  RAYON_NUM_THREADS=1 setsid -w taskset -c 0 "$PYTHON" benchmarks/shard_throughput.py \
    --scaling "$WORK/shard" --size-mb "$DT_MB" --workers 1 >"$WORK/shard_w1.out" 2>&1 &
  DT_PID=$!
  RESERVE=30
  [ "$(nproc)" -gt 1 ] && PIN=(taskset -c "1-$(( $(nproc) - 1 ))")
fi

# GPU steps, most important first (each compiles its models: ~30-60 s per model on an H100).
step train_gpt2_124m_levers 150 300 "$PYTHON" "${TT[@]}" "${SMALL[@]}" --levers "$LEVERS" "${EXTRA[@]}"
step train_gpt2_350m 100 150 "$PYTHON" "${TT[@]}" "${MID[@]}"
step train_llama_1b 80 150 "$PYTHON" "${TT[@]}" "${BIG[@]}"
step train_transformer_base 50 100 "$PYTHON" "${TT[@]}" "${ENC1[@]}"
step train_t5_base 50 100 "$PYTHON" "${TT[@]}" "${ENC2[@]}"
# shellcheck disable=SC2086
step model_ac_docmask 90 180 "$PYTHON" "${MT[@]}" "${MT_RUN[@]}" ${MT_EXTRA:-}

if [ -n "$DT_PID" ]; then
  log "waiting for shard_w1"
  t0=$(date +%s); st=ok
  while kill -0 "$DT_PID" 2>/dev/null; do  # but not past the budget
    if [ $(( $(date +%s) - START )) -gt $(( BUDGET_S - 25 )) ]; then
      kill -TERM -- -"$DT_PID" 2>/dev/null; st="killed (budget)"; break
    fi
    sleep 2
  done
  rc=0; wait "$DT_PID" || rc=$?
  [ "$st" = ok ] && [ "$rc" != 0 ] && st="failed (exit $rc)"
  { echo "----- shard_w1: $st"; cat "$WORK/shard_w1.out"; } >>"$LOG"
  record shard_w1 "$st" $(( $(date +%s) - t0 )) "$WORK/shard_w1.out"
  RESERVE=0; PIN=()
  step shard_scaling 20 120 env RAYON_NUM_THREADS=1 "$PYTHON" benchmarks/shard_throughput.py \
    --scaling "$WORK/shard" --size-mb "$DT_MB" --workers "$DT_WORKERS"
fi

# ---- summary ------------------------------------------------------------------------------
"$PYTHON" benchmarks/gpu_check_summary.py "$RESULTS" "$OUT/gpu_check.json" "$DRY" \
  2>&1 | tee -a "$LOG"
log "finished in $(( $(date +%s) - START ))s; files: $(ls "$OUT" | tr '\n' ' ')"
rm -rf "$WORK"
exit 0
