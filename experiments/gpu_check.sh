#!/usr/bin/env bash
# The accelerator check: every speed figure the project reports for a GPU, in one call (≤ 8 min on
# one H100/H200), written as JSON and logs to OUTDIR with the device, versions and commit.
#
#   experiments/gpu_check.sh OUTDIR [--wheels DIR] [--cifar DIR | --cifar-pieces DIR [DIR ...]] [--smoke]
#
#   --wheels DIR        cp312 wheels of what the machine lacks (grain, tensorflow-datasets, ...):
#                       installed offline into /tmp/site when `import resnet_jax.train` fails.
#   --cifar DIR         the official cifar-10-batches-bin folder.
#   --cifar-pieces DIR  pieces written by ../shared/tools/device/pack_cifar.py (WebP mosaics,
#                       lossless); rebuilt with $UNPACK_TOOL (default: unpack_cifar.py beside the
#                       first piece, else ../shared/tools/device/unpack_cifar.py), md5s in the log.
#   --smoke             the same steps with the tiny :smoke networks and a few steps: a check of
#                       this script on any machine (the test suite runs it on the CPU).
#
# Steps, in order of importance, within a budget of $GPU_CHECK_BUDGET seconds (default 480); each
# bounded by `timeout`, each outcome in OUTDIR/status.txt, a failure or a skip never stops the rest:
#   environment (nvidia-smi, versions, commit -> env.json); ResNet-20 step vs a minimal Flax step
#   with --breakdown (K=1/50); ResNet-50 bf16 b256 vs minimal Flax; with CIFAR-10 the paper's full
#   ResNet-20 schedule (64k steps, held-out eval every epoch) and its test error; ResNet-20 packed
#   R=1/2/4/8; 5 seeds of ResNet-20 packed for a tenth of the schedule; ResNet-56 and ResNet-110
#   (K=1/50, 5 packed); the loop's cost beyond its steps (bench_loop.py); summary.md
#   (experiments/gpu_check_report.py).
set -uo pipefail

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ $# -ge 1 && "$1" != -* ]] || usage
OUT=$(mkdir -p "$1" && cd "$1" && pwd); shift
WHEELS=""; CIFAR=""; PIECES=(); SMOKE=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    --cifar) CIFAR="$2"; shift 2 ;;
    --cifar-pieces) shift; while [[ $# -gt 0 && "$1" != --* ]]; do PIECES+=("$1"); shift; done ;;
    --smoke) SMOKE=1; shift ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; usage ;;
  esac
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
PY=${PYTHON:-python3}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
STATUS="$OUT/status.txt"; : > "$STATUS"
note() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$STATUS"; }

# The whole check fits BUDGET seconds (default 480); steps run in order of importance, each
# within what is left of it (a step that cannot get its minimum is skipped, and said so).
# --smoke checks the plumbing, not the speed: no budget and no limits, so that a loaded machine
# (CI shares its cores) runs every step, however slowly.
BUDGET=${GPU_CHECK_BUDGET:-480}

# run NAME MAX_SECONDS CMD...: stdout+stderr to OUT/NAME.log, the last line (--json) to OUT/NAME.json
run() {
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - SECONDS))
  if [[ $SMOKE == 1 ]]; then
    limit=0  # timeout 0: none
  elif (( left < 30 )); then
    note "$name: skipped (the ${BUDGET} s budget is spent)"; return 0
  elif (( limit > left )); then
    limit=$left
  fi
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 1 "$OUT/$name.log" | grep '^{' > "$OUT/$name.json" || rm -f "$OUT/$name.json"
  note "$name: rc=$rc in $((SECONDS - t0)) s"
  return 0
}

# 1. dependencies and environment
if ! "$PY" -c "import resnet_jax.train" > /dev/null 2>&1; then
  if [[ -n "$WHEELS" ]]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl \
      > "$OUT/install.log" 2>&1
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
  fi
  "$PY" -c "import resnet_jax.train" > "$OUT/import.log" 2>&1 \
    || { note "resnet_jax does not import (see import.log)"; exit 1; }
fi
RJ=("$PY" -m resnet_jax.cli)
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" - > "$OUT/env.json" <<'EOF'
import json, platform, subprocess
import flax, jax, optax, orbax.checkpoint as ocp
from resnet_jax.runtime import provenance
d = jax.devices()[0]
print(json.dumps({"device": f"{jax.device_count()} x {d.device_kind}", "platform": d.platform,
                  "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
                  "orbax": ocp.__version__, "python": platform.python_version(),
                  "commit": provenance.git_commit(), "host": platform.node()}))
EOF
note "environment: $(cat "$OUT/env.json")"

# 2. what to run: the real networks, or (--smoke) the tiny ones for a few steps
if [[ $SMOKE == 1 ]]; then
  R20=cifar10_resnet20:smoke; R56=cifar10_resnet56:smoke; R110=cifar10_resnet110:smoke
  R50=(--config imagenet_resnet50:smoke --set data.image_size=64); STEPS=(--steps 4 --windows 2 --warmup 1); K=2
  R50_STEPS=("${STEPS[@]}"); PACKS=(1 2); R110_PACK=2; SEEDS=(0 1)
  LOOP=(--steps 60); TRAIN=("$R20" --config.num_steps=40); PACKED=("$R20" --config.num_steps=20)
else
  R20=cifar10_resnet20; R56=cifar10_resnet56; R110=cifar10_resnet110
  R50=(--model resnet50 --batch 256 --dtype bfloat16); STEPS=(--steps 50 --windows 3); K=50
  R50_STEPS=(--steps 20 --windows 3); PACKS=(1 2 4 8); R110_PACK=5; SEEDS=(0 1 2 3 4)
  LOOP=(--config cifar10_resnet20 --steps 2000 --train-split "train[:45000]" --eval-split "train[45000:]")
  TRAIN=(cifar10_resnet20); PACKED=(cifar10_resnet20 --config.num_steps=6400)
fi

# 3. CIFAR-10, when given (pieces are rebuilt first)
if [[ ${#PIECES[@]} -gt 0 ]]; then
  TOOL=${UNPACK_TOOL:-}
  [[ -z "$TOOL" && -f "${PIECES[0]}/unpack_cifar.py" ]] && TOOL="${PIECES[0]}/unpack_cifar.py"
  [[ -z "$TOOL" ]] && TOOL="$REPO/../shared/tools/device/unpack_cifar.py"
  CIFAR=/tmp/cifar-10-batches-bin
  "$PY" "$TOOL" "${PIECES[@]}" "$CIFAR" > "$OUT/unpack.log" 2>&1 || note "unpacking the pieces failed"
  for p in "${PIECES[@]}"; do cp -n "$p"/batches.meta.txt "$CIFAR/" 2> /dev/null; done
  note "rebuilt CIFAR-10: $(tr '\n' ' ' < "$OUT/unpack.log")"
fi
TFDS=/tmp/gpu_check_tfds
if [[ -n "$CIFAR" ]]; then
  rm -rf "$TFDS"
  PARTIAL=(); [[ $SMOKE == 1 ]] && PARTIAL=(--allow-partial)  # smoke: a subset of the official files
  run prepare 120 "${RJ[@]}" prepare cifar10 --source "$CIFAR" --data-dir "$TFDS" "${PARTIAL[@]}"
else
  note "no CIFAR-10 given (--cifar / --cifar-pieces): the training runs are skipped"
fi

# 4. in order of importance: the step against a minimal Flax step and its breakdown, ResNet-50,
#    the full ResNet-20 schedule, packed runs, the deeper CIFAR nets, the loop's overhead
run bench_r20 150 "${RJ[@]}" bench --config "$R20" --steps-per-dispatch 1 "$K" "${STEPS[@]}" --compare-minimal \
  --breakdown --json
run bench_r50 120 "${RJ[@]}" bench "${R50[@]}" "${R50_STEPS[@]}" --compare-minimal --json
if [[ -n "$CIFAR" ]]; then
  rm -rf /tmp/gpu_check_r20
  run train_r20 300 "${RJ[@]}" train --config "${TRAIN[@]}" --workdir /tmp/gpu_check_r20 --config.data.data_dir="$TFDS"
  cp /tmp/gpu_check_r20/metrics.jsonl "$OUT/r20_metrics.jsonl" 2> /dev/null
  cp /tmp/gpu_check_r20/sessions.jsonl "$OUT/r20_sessions.jsonl" 2> /dev/null
  run eval_r20_test 60 "${RJ[@]}" eval --workdir /tmp/gpu_check_r20 --split test --json
fi
run bench_r20_packed 120 "${RJ[@]}" bench --config "$R20" "${STEPS[@]}" --pack "${PACKS[@]}" --json
if [[ -n "$CIFAR" ]]; then
  rm -rf /tmp/gpu_check_r20x5
  run train_r20_x5 120 "${RJ[@]}" train --config "${PACKED[@]}" --seeds "${SEEDS[@]}" --pack on \
    --workdir /tmp/gpu_check_r20x5 --config.data.data_dir="$TFDS"
  cp /tmp/gpu_check_r20x5/seed0/sessions.jsonl "$OUT/r20x5_sessions.jsonl" 2> /dev/null
fi
run bench_r56 90 "${RJ[@]}" bench --config "$R56" --steps-per-dispatch 1 "$K" "${STEPS[@]}" --json
run bench_r110 120 "${RJ[@]}" bench --config "$R110" --steps-per-dispatch 1 "$K" "${STEPS[@]}" --pack "$R110_PACK" --json
[[ -n "$CIFAR" ]] && run bench_loop 120 "$PY" experiments/bench_loop.py "${LOOP[@]}" --cifar10-source "$CIFAR" --json

# 5. summary
"$PY" experiments/gpu_check_report.py "$OUT" > "$OUT/summary.md" 2> "$OUT/summary.err" \
  || note "summary failed (see summary.err)"
cat "$OUT/summary.md"
note "done in $SECONDS s"
