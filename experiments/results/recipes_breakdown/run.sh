#!/usr/bin/env bash
# Breakdown of the recipes' parts on a CPU (issue 34): ResNet-20 on CIFAR with every new part on,
# and the ResNet-50 :smoke net of RSB A1 (its parts), each timed in interleaved windows.
# Run from the repository root: experiments/results/recipes_breakdown/run.sh OUTDIR
set -e
out=${1:-experiments/results/recipes_breakdown}
ALL_ON="optimizer.name=lamb optimizer.learning_rate=0.005 optimizer.weight_decay=0.01 optimizer.clip_grad_norm=1.0 loss=binary_cross_entropy ema.decay=0.999 augmentation.policy=randaugment augmentation.num_ops=2 augmentation.magnitude=9 augmentation.random_erasing=0.25 augmentation.mixup_alpha=0.2 augmentation.cutmix_alpha=1.0 accumulation_steps=2"
resnet-jax bench --config cifar10_resnet20 --set $ALL_ON --breakdown --steps 10 --windows 5 --warmup 2 --json > "$out/r20_all_on.log"
resnet-jax bench --config imagenet_resnet50_rsb_a1:smoke --breakdown --steps 10 --windows 5 --warmup 2 --json > "$out/r50_smoke_a1.log"
