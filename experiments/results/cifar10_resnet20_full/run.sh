#!/usr/bin/env bash
# The full-schedule CIFAR-10 ResNet-20 run of He et al. 2015 (Table 6), on whatever machine
# this is (a 2-core CPU here), resumable across sessions and machines.
#
#   run.sh start   start the run, or resume it, in the background (idempotent)
#   run.sh status  is it running; the last progress line
#   run.sh save    copy the newest checkpoint, config, metrics and session log into this folder
#                  (commit them): the folder is then an ordinary workdir, e.g. for
#                  rj.train.load_network(THIS_FOLDER) or resnet-jax eval --workdir THIS_FOLDER
#   run.sh finish  once the run has finished: evaluate the final checkpoint on the test images,
#                  save, and write results.json, curves.png and the table (report.py)
#
# The code that trains is a git worktree of RUN_COMMIT outside the checkout, so edits to the
# checkout never touch the running code. Everything the run writes lives outside the checkout
# too (BASE, default: the checkout's parent folder / resnet20_full). On a new machine, `start`
# recreates the worktree, its venv and the dataset, and seeds the workdir from the checkpoint,
# metrics.jsonl and sessions.jsonl committed here by `save`.
set -euo pipefail

RUN_COMMIT=eee9db65df41664bf9cd3d6860b5a6c0069469c2  # the clean commit that trains (CPU speed-ups included)
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(git -C "$HERE" rev-parse --show-toplevel)"
BASE="${RUN_BASE:-$(dirname "$REPO")/resnet20_full}"
SRC="$BASE/src"
WORKDIR="$BASE/workdir"
DATA_DIR="$BASE/tfds"
CIFAR10_SOURCE="${CIFAR10_SOURCE:-${RESNET_JAX_CIFAR10_DIR:-$REPO/../shared/data/cifar-10-batches-bin}}"
PIDFILE="$WORKDIR/train.pid"

# The paper's recipe (configs/cifar10_resnet20.py: batch 128, SGD 0.9, coupled L2 1e-4, lr 0.1
# ÷10 at 32k and 48k, 64k iterations), BN statistics per 64 examples as on the paper's 2 GPUs,
# the paper's 45k/5k split, seed 0.
TRAIN_ARGS=(--config "$SRC/configs/cifar10_resnet20.py" --workdir "$WORKDIR"
  --config.bn.mode=ghost --config.bn.ghost_batch_size=64
  "--config.data.train_split=train[:45000]" "--config.data.eval_split=train[45000:]"
  --config.seed=0 --config.num_steps=64000 "--config.data.data_dir=$DATA_DIR")

running() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

start() {
  if running; then echo "already running (pid $(cat "$PIDFILE")), workdir $WORKDIR"; return 0; fi
  mkdir -p "$BASE" "$WORKDIR"
  if [[ ! -d "$SRC" ]]; then
    git -C "$REPO" worktree prune
    git -C "$REPO" worktree add --detach "$SRC" "$RUN_COMMIT"
  fi
  local head; head="$(git -C "$SRC" rev-parse HEAD)"
  if [[ "$head" != "$RUN_COMMIT"* ]]; then
    echo "error: $SRC is at $head, not RUN_COMMIT=$RUN_COMMIT; remove it (git worktree remove)" >&2
    return 2
  fi
  if [[ -n "$(git -C "$SRC" status --porcelain --untracked-files=no)" ]]; then
    echo "error: $SRC has local changes; the run must train a clean commit" >&2; return 2
  fi
  # jemalloc makes the CPU step 25-40 % faster (experiments/README.md, "CPU speed").
  if ! ldconfig -p 2>/dev/null | grep -q libjemalloc.so.2; then
    (apt-get install -y -q libjemalloc2 >/dev/null 2>&1 || sudo -n apt-get install -y -q libjemalloc2 >/dev/null 2>&1) \
      || echo "warning: libjemalloc2 could not be installed; training runs ~25 % slower" >&2
  fi
  make -C "$SRC" install >"$BASE/install.log" 2>&1 || { tail -20 "$BASE/install.log" >&2; return 2; }
  "$SRC/.venv/bin/resnet-jax" prepare cifar10 --source "$CIFAR10_SOURCE" --data-dir "$DATA_DIR" 2>&1 | tail -1
  # A new machine: continue from what `save` committed here.
  if ! ls -d "$WORKDIR"/checkpoints/[0-9]* >/dev/null 2>&1 && [[ -d "$HERE/checkpoints" ]]; then
    local step; step="$(ls "$HERE/checkpoints" | grep -E '^[0-9]+$' | sort -n | tail -1)"
    mkdir -p "$WORKDIR/checkpoints"
    cp -r "$HERE/checkpoints/$step" "$WORKDIR/checkpoints/$step"
    for f in metrics.jsonl sessions.jsonl; do [[ -f "$HERE/$f" ]] && cp "$HERE/$f" "$WORKDIR/$f"; done
    echo "seeded $WORKDIR from the committed checkpoint of step $step"
  fi
  cd "$WORKDIR"
  nohup "$SRC/.venv/bin/resnet-jax" train "${TRAIN_ARGS[@]}" >>"$WORKDIR/train.log" 2>&1 &
  echo $! >"$PIDFILE"
  echo "started pid $! (commit $RUN_COMMIT); log: $WORKDIR/train.log"
}

status() {
  if running; then echo "running (pid $(cat "$PIDFILE"))"; else echo "not running"; fi
  grep -E "^(step|eval|resumed|finished|preempted)" "$WORKDIR/train.log" 2>/dev/null | tail -3 || true
}

save() {
  local latest
  latest="$(ls -d "$WORKDIR"/checkpoints/[0-9]* 2>/dev/null | xargs -n1 basename | sort -n | tail -1)"
  if [[ -z "$latest" ]]; then echo "error: no checkpoint in $WORKDIR/checkpoints" >&2; return 2; fi
  rm -rf "$HERE/checkpoints.new"
  mkdir -p "$HERE/checkpoints.new"
  cp -r "$WORKDIR/checkpoints/$latest" "$HERE/checkpoints.new/$latest"
  rm -rf "$HERE/checkpoints"
  mv "$HERE/checkpoints.new" "$HERE/checkpoints"
  cp "$WORKDIR/metrics.jsonl" "$WORKDIR/sessions.jsonl" "$WORKDIR/config.json" "$HERE/"
  for f in workdir.json preprocessing.json; do [[ -f "$WORKDIR/$f" ]] && cp "$WORKDIR/$f" "$HERE/"; done
  echo "saved checkpoint $latest ($(du -sh "$HERE/checkpoints" | cut -f1)) to $HERE/checkpoints"
}

finish() {
  if running; then echo "error: the run is still training (pid $(cat "$PIDFILE")); finish it first" >&2; return 2; fi
  local num_steps
  num_steps="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["num_steps"])' "$WORKDIR/config.json")"
  if [[ ! -d "$WORKDIR/checkpoints/$num_steps" ]]; then
    echo "error: no checkpoint of step $num_steps in $WORKDIR/checkpoints; resume with: $0 start" >&2; return 2
  fi
  # The run's own code evaluates its final checkpoint on the official test images available here.
  "$SRC/.venv/bin/resnet-jax" eval --workdir "$WORKDIR" --step "$num_steps" --split test --json \
    >"$HERE/eval_test.log" 2>&1 || { tail -5 "$HERE/eval_test.log" >&2; return 2; }
  save
  [[ -x "$REPO/.venv/bin/python" ]] || make -C "$REPO" install >/dev/null
  "$REPO/.venv/bin/python" "$HERE/report.py" --workdir "$WORKDIR" --test-eval "$HERE/eval_test.log" \
    --run-commit "$RUN_COMMIT" --out "$HERE"
}

case "${1:-start}" in
  start) start ;;
  status) status ;;
  save) save ;;
  finish) finish ;;
  *) echo "usage: $0 [start|status|save|finish]" >&2; exit 2 ;;
esac
