"""Shared base of every experiment config (ml_collections).

An experiment file calls one of the `*_config` helpers below from its
`get_config(arg=None)`; `arg == "smoke"` (`configs/<name>.py:smoke`) selects a
tiny variant that trains for a few steps on CPU in seconds. Every field can be
overridden on the command line: `--config.optimizer.learning_rate=0.05`.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import ml_collections

from resnet_jax import errors
import resnet_jax.data as rjd


def _optimizer_defaults() -> ml_collections.ConfigDict:
  """The optimiser: SGD as the papers (the modern optimisers' own fields: `modern_recipe_fields`)."""
  return ml_collections.ConfigDict({
      "name": "sgd",                    # sgd | adamw | lamb | lars (resnet_jax/train/optim.py)
      "learning_rate": 0.1,             # at `schedule.reference_batch_size` when that is set
      "momentum": 0.9,                  # sgd, lars
      "nesterov": False,                # sgd, lars
      "weight_decay": 1e-4,
      "weight_decay_mode": "coupled",   # sgd: coupled L2 (papers) | decoupled
      "weight_decay_exclude": "",       # regex over param paths, e.g. r"(bias|scale)$"; lamb/lars:
                                        # these get no trust ratio either (MLPerf's skip list)
      # The parameters matching this regex learn at learning_rate × the factor (Fixup's scalars: 0.1).
      "scaled_learning_rate_params": "",
      "scaled_learning_rate_factor": 1.0,
  })


def base_config() -> ml_collections.ConfigDict:
  """Defaults: He et al. 2015 §4.2 (CIFAR-10, batch 128 on 2 GPUs, SGD 0.9, wd 1e-4, 64k iterations)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # `name` for `resnet_jax.models.create` plus any ResNet field to override (the number
  # of classes comes from the dataset, the dtype from `dtype`, BN fields from `bn`).
  c.model = ml_collections.ConfigDict({"name": "cifar_resnet20"})
  # Compute dtype; parameters and BN statistics are always float32.
  c.dtype = "float32"
  c.data = rjd.default_config("cifar10")
  c.global_batch_size = 128
  c.eval_batch_size = 500
  # BatchNorm statistics: "global" (whole batch), "per_device" (each device's shard), "ghost"
  # (groups of `ghost_batch_size` examples). The papers normalised per GPU: 128 images on 2
  # GPUs for CIFAR (He et al. 2015 §4.2, 2016), so the paper configs use ghost groups of the
  # papers' per-GPU batch on any hardware; `--config.bn.mode=global` synchronises instead.
  # `unbiased_variance`: the running variance averages the unbiased batch variance, as the
  # papers' frameworks (Caffe, Torch7) and PyTorch do.
  c.bn = ml_collections.ConfigDict({"mode": "ghost", "ghost_batch_size": 64, "unbiased_variance": True})
  c.optimizer = _optimizer_defaults()
  c.schedule = ml_collections.ConfigDict({
      "name": "step",                   # step | cosine | polynomial | constant
      "reference_batch_size": 0,        # >0: lr = base × global_batch / reference (Goyal et al.)
      "unit": "steps",                  # unit of boundaries and warmup_length: steps | epochs
      "boundaries": (32000, 48000),
      "decay_factor": 0.1,
      "warmup_length": 0.0,
      "warmup_mode": "constant",        # constant (He et al. 2015 ResNet-110) | linear
      "warmup_learning_rate": 0.01,     # the warm-up value (constant) or start (linear)
  })
  c.label_smoothing = 0.0
  modern_recipe_fields(c)
  # Training length: exactly one of num_steps / num_epochs is positive.
  c.num_steps = 64000
  c.num_epochs = -1.0
  c.log_every_steps = 100
  c.eval_every_epochs = 1
  c.checkpoint_every_steps = 2000
  c.keep_checkpoints = 3
  c.keep_best_checkpoints = 1
  c.steps_per_dispatch = 1             # >1: several steps per dispatch with lax.scan
  # >0: every N steps, record the gradient highway (He et al. 2016, Eq. 5) of a fixed batch
  # (kind "gradient_highway" in metrics.jsonl and TensorBoard; resnet_jax/train/highway_log.py).
  c.gradient_highway_every_steps = 0
  c.async_checkpoints = True
  # Start from the weights (params and BN statistics) of another run, "WORKDIR" (its latest
  # checkpoint), "WORKDIR:best" or "WORKDIR:STEP", with a fresh optimiser, schedule and data
  # order: fine-tuning, or continuing deliberately with a changed recipe in a new workdir.
  c.init_from = ""
  return c


def modern_recipe_fields(c: ml_collections.ConfigDict) -> None:
  """The fields of the modern recipes' parts (docs/training.md, "Recipes"), each off by default: the
  papers' configs train as they did without them."""
  c.optimizer.update({
      "b1": 0.9,                        # adamw, lamb: Adam's moment decays and epsilon
      "b2": 0.999,
      "eps": 1e-8,                      # also lars' epsilon in its trust ratio
      "trust_coefficient": 0.001,       # lars: η of You et al. 2017
      "clip_grad_norm": 0.0,            # >0: clip the global gradient norm to this (every optimiser)
  })
  c.schedule.update({
      "power": 2.0,                     # polynomial: (peak - end)·(1 - s/S)^power + end (MLPerf)
      "end_learning_rate": 0.0,         # polynomial: the rate it decays to (not batch-scaled)
  })
  # "cross_entropy" (softmax; soft targets when mixing) | "binary_cross_entropy" (a sigmoid
  # per class on the (mixed, smoothed) one-hot targets, "ResNet strikes back").
  c.loss = "cross_entropy"
  # >1: each step's global batch is this many micro-batches whose gradients are averaged
  # (one optimiser step); BatchNorm normalises each micro-batch (docs/training.md, "Recipes").
  c.accumulation_steps = 1
  # Exponential moving average of the params and BatchNorm statistics (timm's ModelEmaV3),
  # evaluated beside the raw weights. decay 0: off. `warmup`: decay 1 - (1 + t/gamma)^-power,
  # at most `decay`. `keep_best`: keep_best_checkpoints ranks by the EMA's eval error.
  c.ema = ml_collections.ConfigDict({"decay": 0.0, "warmup": False, "warmup_gamma": 1.0,
                                     "warmup_power": 2.0 / 3.0, "keep_best": False})
  # On-device batch augmentation beyond the dataset's own (resnet_jax/data/augment.py,
  # auto_augment.py), each off by default. policy: none | randaugment (num_ops ops at
  # `magnitude` of 31 bins, ± magnitude_std) | trivialaugment; random_erasing: probability;
  # mixup_alpha / cutmix_alpha: Beta(α, α) mixing of the batch with its reverse, with
  # probability mix_prob, CutMix chosen with switch_prob when both are on (timm's Mixup).
  c.augmentation = ml_collections.ConfigDict({
      "policy": "none", "num_ops": 2, "magnitude": 9, "magnitude_std": 0.0, "random_erasing": 0.0,
      "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "mix_prob": 1.0, "switch_prob": 0.5})


def _set_model(c: ml_collections.ConfigDict, name: str, fields: Dict[str, Any]) -> None:
  c.model = ml_collections.ConfigDict({"name": name, **fields})


def smoke(c: ml_collections.ConfigDict, model_fields: Dict[str, Any], image_size: Optional[int] = None,
          ) -> ml_collections.ConfigDict:
  """Tiny variant: a narrow one-unit-per-stage net, 20 steps of batch 32, a short eval split."""
  _set_model(c, c.model.name, {**{k: v for k, v in c.model.items() if k != "name"}, **model_fields})
  if image_size is not None:
    c.data.image_size = image_size
  c.global_batch_size = 32
  c.eval_batch_size = 100
  c.num_steps = 20
  c.num_epochs = -1.0
  c.schedule.unit = "steps"
  c.schedule.boundaries = (10, 15)
  c.schedule.warmup_length = min(c.schedule.warmup_length, 2.0)
  c.data.train_split = "train[:640]"
  c.data.eval_split = "test[:200]"
  c.log_every_steps = 5
  c.checkpoint_every_steps = 10
  fit_ghost_batch(c)
  return c


def fit_ghost_batch(c: ml_collections.ConfigDict) -> None:
  """Smoke batches are small: keep two ghost BatchNorm groups per batch at most."""
  c.bn.ghost_batch_size = max(1, min(int(c.bn.ghost_batch_size), c.global_batch_size // 2))


CIFAR_SMOKE_BASIC = {"stage_sizes": (1, 1, 1), "stage_widths": (4, 8, 16), "stem_width": 4}
CIFAR_SMOKE_BOTTLENECK = {"stage_sizes": (1, 1, 1), "stage_widths": (4, 8, 16), "stem_width": 4}
CIFAR_SMOKE_RESNEXT = {"stage_sizes": (1, 1, 1), "stage_widths": (8, 16, 32), "stem_width": 8,
                       "cardinality": 2, "bottleneck_width": 4}
IMAGENET_SMOKE = {"stage_sizes": (1, 1, 1, 1), "stage_widths": (4, 8, 16, 32), "stem_width": 8}
IMAGENET_SMOKE_RESNEXT = {**IMAGENET_SMOKE, "cardinality": 2, "bottleneck_width": 2}


def cifar_resnet_config(model: str, dataset: str = "cifar10", warmup: bool = False,
                        arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """He et al. 2015 §4.2 / He et al. 2016 appendix: 0.1, ÷10 at 32k and 48k, stop at 64k.

  `warmup`: 0.01 for the first 400 iterations (He et al. 2015: ResNet-110 and deeper;
  He et al. 2016: every CIFAR run).
  """
  c = base_config()
  c.data = rjd.default_config(dataset)
  _set_model(c, model, {})
  if warmup:
    c.schedule.warmup_length = 400.0
    c.schedule.warmup_mode = "constant"
    c.schedule.warmup_learning_rate = 0.01
  if arg == "smoke":
    bottleneck = "preact_resnet164" in model or "preact_resnet1001" in model
    smoke(c, CIFAR_SMOKE_BOTTLENECK if bottleneck else CIFAR_SMOKE_BASIC)
  elif arg:
    raise errors.InputError(f"unknown config variant {arg!r}; valid: 'smoke' or none")
  return c


def cifar_epochs_config(model: str, model_fields: Dict[str, Any], num_epochs: float, boundaries: tuple
                        ) -> ml_collections.ConfigDict:
  """A CIFAR-10 recipe of the later papers, counted in epochs: batch 128, SGD momentum 0.9, lr 0.1
  ÷10 at `boundaries` (epochs), per-channel normalisation (their code's), He et al. 2015's
  augmentation; the papers' own choices beyond these are set by their config files."""
  c = base_config()
  _set_model(c, model, model_fields)
  c.num_steps = -1
  c.num_epochs = float(num_epochs)
  c.schedule.unit = "epochs"
  c.schedule.boundaries = tuple(float(b) for b in boundaries)
  c.data.normalization = "per_channel"
  return c


def with_variant(c: ml_collections.ConfigDict, arg: Optional[str]) -> ml_collections.ConfigDict:
  """`c`, or its smoke variant (`arg == "smoke"`) of a basic-block CIFAR net."""
  if arg == "smoke":
    return smoke(c, CIFAR_SMOKE_BASIC)
  if arg:
    raise errors.InputError(f"unknown config variant {arg!r}; valid: 'smoke' or none")
  return c


def cifar_resnext_config(model: str, dataset: str = "cifar10",
                         arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """Xie et al. 2017 App. A: batch 128 on 8 GPUs (BN groups of 16), wd 5e-4, 300 epochs,
  ÷10 at epochs 150 and 225."""
  c = base_config()
  c.bn.ghost_batch_size = 16
  c.data = rjd.default_config(dataset)
  _set_model(c, model, {})
  c.optimizer.weight_decay = 5e-4
  c.num_steps = -1
  c.num_epochs = 300.0
  c.schedule.unit = "epochs"
  c.schedule.boundaries = (150.0, 225.0)
  c.checkpoint_every_steps = 5000
  if arg == "smoke":
    smoke(c, CIFAR_SMOKE_RESNEXT)
  elif arg:
    raise errors.InputError(f"unknown config variant {arg!r}; valid: 'smoke' or none")
  return c


RECIPES = ("resnet", "resnext")


def imagenet_smoke(c: ml_collections.ConfigDict, model_fields: Dict[str, Any]) -> ml_collections.ConfigDict:
  """The tiny ImageNet variant: 64² inputs, batch 16, 4 steps on 64 train / 32 validation images."""
  smoke(c, model_fields, image_size=64)
  c.data.eval_resize = 73
  c.data.scale_range = (64, 120)
  c.global_batch_size = 16
  c.eval_batch_size = 16
  c.num_steps = 4
  c.schedule.boundaries = (2, 3)
  c.log_every_steps = 2
  c.checkpoint_every_steps = 2
  c.data.train_split = "train[:64]"
  c.data.eval_split = "validation[:32]"
  fit_ghost_batch(c)
  return c


def imagenet_config(model: str, num_epochs: float = 90.0, recipe: str = "resnet",
                    arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """ImageNet: batch 256 on 8 GPUs (BN groups of 32), 0.1, ÷10 every 30 epochs.

  recipe "resnet": He et al. 2015 §3.4, scale augmentation S ~ U[256, 480] and AlexNet
  PCA lighting, plain momentum (Caffe), the schedule of fb.resnet.torch/torchvision.
  recipe "resnext": Xie et al. 2017 §4, trained with fb.resnet.torch's pipeline:
  Inception-style scale + aspect-ratio crop, color jitter 0.4, PCA lighting 0.1,
  Nesterov momentum.
  """
  if recipe not in RECIPES:
    raise errors.InputError(f"unknown ImageNet recipe {recipe!r}; valid: {', '.join(RECIPES)}")
  c = base_config()
  c.data = rjd.default_config("imagenet2012")
  c.data.pca_lighting = True
  c.bn.ghost_batch_size = 32
  if recipe == "resnext":
    c.data.train_augment = "inception"
    c.data.color_jitter = 0.4
    c.optimizer.nesterov = True
  _set_model(c, model, {})
  c.global_batch_size = 256
  c.eval_batch_size = 250
  c.num_steps = -1
  c.num_epochs = num_epochs
  c.schedule.unit = "epochs"
  c.schedule.boundaries = tuple(float(e) for e in range(30, int(num_epochs), 30))
  c.log_every_steps = 500
  c.checkpoint_every_steps = 5000
  if arg == "smoke":
    imagenet_smoke(c, IMAGENET_SMOKE_RESNEXT if "resnext" in model else IMAGENET_SMOKE)
  elif arg:
    raise errors.InputError(f"unknown config variant {arg!r}; valid: 'smoke' or none")
  return c


# -- modern recipes (docs/training.md, "Recipes"; published numbers in resnet_jax/paper.py) ----------
BN_AND_BIASES = r"(bias|scale)$"          # MLPerf's LARS skip list, timm's no-decay group
BN_ONLY = r"bn\d*/(bias|scale)$"          # Goyal et al.: no decay on BatchNorm's γ and β

# "ResNet strikes back" (Wightman et al. 2021, Table 1) procedures A1, A2, A3 for ResNet-50.
RSB = {
    "a1": dict(epochs=600.0, lr=5e-3, weight_decay=0.01, smoothing=0.1, magnitude=7, mixup=0.2, repeats=3,
               train_size=224, drop_path=0.05),
    "a2": dict(epochs=300.0, lr=5e-3, weight_decay=0.02, smoothing=0.0, magnitude=7, mixup=0.1, repeats=3,
               train_size=224, drop_path=0.05),
    "a3": dict(epochs=100.0, lr=8e-3, weight_decay=0.02, smoothing=0.0, magnitude=6, mixup=0.1, repeats=1,
               train_size=160, drop_path=0.0),
}


def _recipe_variant(c: ml_collections.ConfigDict, arg: Optional[str], imagenet: bool) -> ml_collections.ConfigDict:
  if arg == "smoke":
    return imagenet_smoke(c, IMAGENET_SMOKE) if imagenet else smoke(c, CIFAR_SMOKE_PREACT18)
  if arg:
    raise errors.InputError(f"unknown config variant {arg!r}; valid: 'smoke' or none")
  return c


def _imagenet_recipe(model: str, batch: int, epochs: float, bn_group: int) -> ml_collections.ConfigDict:
  """ImageNet with the Inception-style crop and flip only (no colour noise), epochs as the unit."""
  c = base_config()
  c.data = rjd.default_config("imagenet2012")
  c.data.train_augment = "inception"
  c.data.pca_lighting = False
  _set_model(c, model, {"zero_init_residual": True})
  c.global_batch_size = batch
  c.eval_batch_size = 250
  c.bn.ghost_batch_size = bn_group
  c.num_steps = -1
  c.num_epochs = epochs
  c.schedule.unit = "epochs"
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  return c


def rsb_config(procedure: str, arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """Wightman et al. 2021 ("ResNet strikes back"), Table 1, for `resnet50_v1_5` (timm's ResNet-50):
  LAMB at batch 2048 with timm's built-in global-norm clipping at 1, 5-epoch linear warm-up then
  cosine, BCE on mixup/CutMix targets, RandAugment rand-m{7,6}-mstd0.5, repeated augmentation
  ×3 (A1, A2), stochastic depth 0.05 by timm's rule (A1, A2), test crop ratio 0.95, the last
  BatchNorm of each block zero-initialised (timm).

  Deviations: timm's RandAugment op set ("inc1") is replaced by torchvision's (the magnitude
  mapped from timm's 0-10 scale to 31 bins: M·3, std 0.5·3); BatchNorm in groups of 256 (timm
  normalises per GPU).
  """
  p = RSB[procedure]
  c = _imagenet_recipe("resnet50_v1_5", 2048, p["epochs"], 256)
  c.data.image_size = p["train_size"]
  c.data.eval_resize = 235                 # timm: floor(224 / 0.95), then the 224 centre crop
  c.data.repeated_augmentation = p["repeats"]
  if p["drop_path"]:
    c.model.update(drop_path_rate=p["drop_path"], drop_path_rule="timm")
  c.optimizer.update(name="lamb", learning_rate=p["lr"], weight_decay=p["weight_decay"], eps=1e-6,
                     weight_decay_exclude=BN_AND_BIASES, clip_grad_norm=1.0)
  c.schedule.update(name="cosine", warmup_length=5.0, warmup_mode="linear", warmup_learning_rate=1e-6)
  c.loss = "binary_cross_entropy"
  c.label_smoothing = p["smoothing"]
  c.augmentation.update(policy="randaugment", num_ops=2, magnitude=3 * p["magnitude"], magnitude_std=1.5,
                        mixup_alpha=p["mixup"], cutmix_alpha=1.0)
  c.data.eval_image_size = 224             # A3 trains at 160 and tests at 224
  c = _recipe_variant(c, arg, imagenet=True)
  if arg == "smoke":
    c.data.image_size, c.data.eval_image_size = (48, 64) if p["train_size"] != 224 else (64, 64)
  return c


def goyal_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """Goyal et al. 2017: ResNet-50 at batch 8192 (256 GPUs × 32, BatchNorm per GPU), the linear
  scaling rule lr = 0.1·8192/256 = 3.2, a 5-epoch gradual warm-up from 0.1, ÷10 at epochs 30,
  60 and 80 of 90, Nesterov momentum 0.9, weight decay 1e-4 except BatchNorm's γ and β, the last
  γ of each residual block zero-initialised."""
  c = _imagenet_recipe("resnet50_v1_5", 8192, 90.0, 32)
  c.optimizer.update(learning_rate=0.1, nesterov=True, weight_decay_exclude=BN_ONLY)
  c.schedule.update(reference_batch_size=256, boundaries=(30.0, 60.0, 80.0), warmup_length=5.0,
                    warmup_mode="linear", warmup_learning_rate=0.1 * 256 / 8192)  # 0.1 after the scaling
  return _recipe_variant(c, arg, imagenet=True)


def mlperf_lars_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """MLPerf Training's ResNet-50 v1.5 reference with LARS at batch 4096 (mlcommons/training
  v1.0, image_classification/README_tensorflow2.md, TPU v3-64): lr 10, 5-epoch warm-up from 0,
  polynomial decay of power 2 to 1e-4 over 42 epochs, momentum 0.9, weight decay 2e-4, LARS
  η = 0.001 skipping BatchNorm and biases, label smoothing 0.1, the Inception crop of area
  5-100 %; quality target 75.9 % top-1."""
  c = _imagenet_recipe("resnet50_v1_5", 4096, 42.0, 64)
  c.model.zero_init_residual = False
  c.data.area_range = (0.05, 1.0)
  # lars_epsilon=0 in the command becomes Keras' epsilon (1e-7): `epsilon or backend_config.epsilon()`.
  c.optimizer.update(name="lars", learning_rate=10.0, weight_decay=2e-4, trust_coefficient=0.001, eps=1e-7,
                     weight_decay_exclude=BN_AND_BIASES)
  c.schedule.update(name="polynomial", power=2.0, end_learning_rate=1e-4, warmup_length=5.0,
                    warmup_mode="linear", warmup_learning_rate=0.0)
  c.label_smoothing = 0.1
  return _recipe_variant(c, arg, imagenet=True)


CIFAR_SMOKE_PREACT18 = {"stage_sizes": (1, 1, 1, 1), "stage_widths": (4, 8, 16, 32), "stem_width": 4}


def cifar_mixup_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """Zhang et al. 2018 (mixup), CIFAR-10 with PreAct ResNet-18 (He et al. 2016 units, the 64-wide
  3×3 stem and four stages of their code): mixup α = 1 with soft-target cross-entropy, SGD 0.1,
  momentum 0.9, weight decay 1e-4, batch 128 on one GPU, 200 epochs, ÷10 at epochs 100 and 150,
  per-channel normalisation, pad-crop-flip. Test error 4.2 % (their Figure 3a table)."""
  c = base_config()
  _set_model(c, "preact_resnet18", {"stem": "cifar", "stem_width": 64})
  c.data.normalization = "per_channel"
  c.bn.mode = "global"
  c.num_steps = -1
  c.num_epochs = 200.0
  c.schedule.update(unit="epochs", boundaries=(100.0, 150.0))
  c.augmentation.mixup_alpha = 1.0
  c.checkpoint_every_steps = 5000
  return _recipe_variant(c, arg, imagenet=False)
