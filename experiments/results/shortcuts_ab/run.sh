#!/usr/bin/env bash
# Paired comparison of option A vs B shortcuts, ResNet-20, 5 seeds, reduced budget (2,000 steps,
# the schedule's drops scaled to 1,000 and 1,500), held-out protocol. Code: clean worktree at 6df7078.
cd /work/wt/run_ab
export PYTHONPATH=/work/wt/run_ab JAX_PLATFORMS=cpu TFDS_DATA_DIR=/work/runs/tfds
export LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 MALLOC_CONF=retain:true,dirty_decay_ms:-1,muzzy_decay_ms:-1 RESNET_JAX_ALLOCATOR_ACTIVE=jemalloc
exec nice -n 10 /work/main/.venv/bin/python experiments/cifar_shortcuts.py --model cifar10_resnet20 \
  --only option_A option_B --seeds 0 1 2 3 4 --steps 2000 --protocol heldout --pack off \
  --workdir /work/runs/shortcuts_ab/runs --results /work/runs/shortcuts_ab/results \
  --cifar10-source /work/shared/data/cifar-10-batches-bin --data-dir /work/runs/tfds
