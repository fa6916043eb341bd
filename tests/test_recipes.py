"""The modern recipes' parts (issue 34), each against a reference nobody here wrote where one exists.

* one LAMB, one LARS and one AdamW step, teacher-forced from the same state, equal timm's `Lamb`,
  timm's `Lars` and torch's `AdamW` (`fixtures/make_recipe_reference.py`) to 1e-6 relative;
* BCE equals `torch.nn.BCEWithLogitsLoss` on timm's `mixup_target`;
* CutMix's label weight is the pasted area; mixup mixes images and targets with one λ;
* the EMA after N steps equals its closed form; accumulated gradients equal the large batch's;
* a run with every new piece on resumes bit-exactly after a kill, and its packed step equals
  its unpacked one; the default configs compile to the program they compiled to without
  these parts (every recipe's :smoke trains: `test_recipe_smokes.py`).
"""
from __future__ import annotations

import functools
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import support
import test_packed

import resnet_jax as rj
from resnet_jax import configs
from resnet_jax import errors
from resnet_jax import paper
from resnet_jax.data import augment
from resnet_jax.data.train_iterator import TrainIterator, epoch_order
from resnet_jax.storage import workdir as workdir_lib
from resnet_jax.storage.workdir import Workdir
from resnet_jax.train import build, ema as ema_lib, optim, packing, parts
from resnet_jax.train import config as config_lib
from resnet_jax.train import state as state_lib
from resnet_jax.train import step as step_lib

REF = np.load(pathlib.Path(__file__).parent / "fixtures" / "recipe_reference.npz")
# Every new piece on, on the tiny CIFAR-10 smoke net (one RandAugment op keeps the compile short).
ALL_ON = {"optimizer.name": "lamb", "optimizer.learning_rate": 0.005, "optimizer.weight_decay": 0.02,
          "optimizer.weight_decay_exclude": r"(bias|scale)$", "optimizer.clip_grad_norm": 1.0,
          "schedule.name": "polynomial", "loss": "binary_cross_entropy", "label_smoothing": 0.1,
          "accumulation_steps": 2, "ema.decay": 0.9, "ema.warmup": True, "ema.keep_best": True,
          "augmentation.policy": "randaugment", "augmentation.num_ops": 1, "augmentation.magnitude_std": 1.5,
          "augmentation.random_erasing": 0.25, "augmentation.mixup_alpha": 0.2, "augmentation.cutmix_alpha": 1.0,
          "data.repeated_augmentation": 2}


# The second run of the packing test: other values of the per-run fields.
PACKED_VALUES = {"ema.decay": 0.99, "augmentation.mixup_alpha": 0.8, "optimizer.learning_rate": 0.01}


def all_on_config(data_dir, seed: int = 0, **values):
  """6 steps with every new piece on (the resume and the packing tests share its program)."""
  return support.smoke_config(data_dir, seed=seed, **{**ALL_ON, "num_steps": 6, "checkpoint_every_steps": 3,
                                                      "keep_checkpoints": 5, "log_every_steps": 3, **values})


def relative_l2(a, b) -> float:
  flat = lambda t: np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(t)])
  return float(np.linalg.norm(flat(a) - flat(b)) / np.linalg.norm(flat(b)))


# -- optimisers ---------------------------------------------------------------------------
OPTIMIZER_CONFIGS = {
    "lamb": ("imagenet_resnet50_rsb_a1", {}),
    "lars": ("imagenet_resnet50_mlperf_lars", {}),
    "adamw": ("cifar10_resnet20", {"optimizer.name": "adamw", "optimizer.learning_rate": 1e-3,
                                   "optimizer.weight_decay": 0.05, "optimizer.weight_decay_exclude": r"(bias|scale)$"}),
}


def _reference_tree(name: str, key: str):
  prefix = f"{name}/{key}/"
  out = {}
  for k in REF.files:
    if k.startswith(prefix):
      module, leaf = k[len(prefix):].split("/")
      out.setdefault(module, {})[leaf] = jnp.asarray(REF[k])
  return out


def _one_step_errors(name: str):
  """(relative L2 of the parameters, of the moments) after our step vs PyTorch's."""
  spec, overrides = OPTIMIZER_CONFIGS[name]
  config = configs.load(spec, overrides=overrides)
  hyper = {k.rsplit("/", 1)[1]: float(REF[k]) for k in REF.files if k.startswith(f"{name}/hyper/")}
  assert {k: config.optimizer[k] for k in hyper} == pytest.approx(hyper)   # the recipe's own values
  params, grads, m, v = (_reference_tree(name, k) for k in ("params", "grads", "m", "v"))
  decayed = optim.weight_decay_mask(params, config.optimizer.weight_decay_exclude)
  assert {f"{a}/{b}" for a in decayed for b in decayed[a] if not decayed[a][b]} == set(REF["no_decay"])
  tx = optim.create_optimizer(config, lambda count: hyper["learning_rate"])
  state = tx.init(params)
  if name == "lars":
    state = optax.tree_utils.tree_set(state, trace=m)
  else:
    state = optax.tree_utils.tree_set(state, count=jnp.asarray(int(REF["steps_before"]), jnp.int32), mu=m, nu=v)
  updates, new_state = jax.jit(tx.update)(grads, state, params)
  moments = ["m_after"] + (["v_after"] if name != "lars" else [])
  ours = [optax.tree_utils.tree_get(new_state, "trace" if name == "lars" else "mu")]
  ours += [optax.tree_utils.tree_get(new_state, "nu")] if name != "lars" else []
  return (relative_l2(optax.apply_updates(params, updates), _reference_tree(name, "after")),
          max(relative_l2(a, _reference_tree(name, k)) for a, k in zip(ours, moments)))


def test_lamb_step_equals_timm_lamb():
  params_error, moments_error = _one_step_errors("lamb")
  assert params_error <= 1e-6 and moments_error <= 1e-6, (params_error, moments_error)


def test_lars_step_equals_timm_lars():
  params_error, moments_error = _one_step_errors("lars")
  assert params_error <= 1e-6 and moments_error <= 1e-6, (params_error, moments_error)


def test_adamw_step_equals_torch_adamw():
  params_error, moments_error = _one_step_errors("adamw")
  assert params_error <= 1e-6 and moments_error <= 1e-6, (params_error, moments_error)


def test_polynomial_schedule_is_mlperfs_poly_rate():
  """MLPerf's `PolynomialDecayWithWarmup`: lr·t/w during the warm-up, then Keras' PolynomialDecay
  of (t − w) over total − w + 1 steps, power 2, to 1e-4 (lars_util.py). Float32 to one ulp of
  the peak rate (Optax's linear warm-up computes 10 − 10·(1 − t/w))."""
  config = configs.load("imagenet_resnet50_mlperf_lars")
  per_epoch, total = 312, rj.train.num_train_steps(config, 312)
  warmup = 5 * per_epoch
  schedule = optim.create_learning_rate_schedule(config, per_epoch, total)
  for t in (0, 1, warmup - 1, warmup, warmup + 1, total // 2, total - 1):
    want = 10.0 * t / warmup if t <= warmup else (
        (10.0 - 1e-4) * (1 - min(t - warmup, total - warmup + 1) / (total - warmup + 1)) ** 2 + 1e-4)
    assert float(schedule(t)) == pytest.approx(want, rel=1e-5, abs=1e-6 * 10.0), t


# -- losses and mixing ----------------------------------------------------------------------
def test_bce_equals_torch_bce_with_logits():
  logits, labels = jnp.asarray(REF["bce/logits"]), jnp.asarray(REF["bce/labels"])
  for case in ("mixed", "unmixed"):
    lam, smoothing = float(REF[f"bce/{case}/lam"]), float(REF[f"bce/{case}/smoothing"])
    targets = augment.mix_targets(augment.smoothed_one_hot(labels, 10, smoothing), lam)
    np.testing.assert_allclose(targets, REF[f"bce/{case}/targets"], rtol=0, atol=2e-7)  # 1 ulp at 1
    loss = float(parts.binary_cross_entropy(logits, targets).mean())
    assert loss == pytest.approx(float(REF[f"bce/{case}/loss"]), rel=1e-6)
  config = configs.load("cifar10_resnet20", overrides={"loss": "binary_cross_entropy", "label_smoothing": 0.1})
  unmixed = float(parts.loss(config, 10)(logits, labels).mean())  # labels in, smoothed one-hot inside
  assert unmixed == pytest.approx(float(REF["bce/unmixed/loss"]), rel=1e-6)


@functools.lru_cache(maxsize=None)
def _mixer(use_mixup: bool, use_cutmix: bool):
  return jax.jit(lambda images, targets, key: augment.mix_batch(
      images, targets, key, mixup_alpha=0.4, cutmix_alpha=1.0, mix_prob=1.0, switch_prob=0.5,
      use_mixup=use_mixup, use_cutmix=use_cutmix))


def _constant_batch(b: int = 4):
  """Image i is the grey level 10·(i + 1) everywhere; its target the one-hot of class i."""
  images = jnp.broadcast_to((10.0 * (jnp.arange(b) + 1.0))[:, None, None, None], (b, 32, 32, 3))
  return images, jax.nn.one_hot(jnp.arange(b), b)


def test_cutmix_label_weight_is_the_pasted_area(fast_compile):
  images, targets = _constant_batch()
  for seed in range(8):
    mixed, mixed_targets = _mixer(False, True)(images, targets, jax.random.PRNGKey(seed))
    pasted = float(jnp.mean(mixed[0, :, :, 0] == images[-1, 0, 0, 0]))   # pixels of the reversed batch
    assert float(mixed_targets[0, -1]) == pytest.approx(pasted, abs=1e-6), seed
    assert float(mixed_targets[0, 0]) == pytest.approx(1.0 - pasted, abs=1e-6), seed


def test_mixup_mixes_images_and_targets_with_one_lambda(fast_compile):
  images, targets = _constant_batch()
  for seed in range(4):
    mixed, mixed_targets = _mixer(True, False)(images, targets, jax.random.PRNGKey(seed))
    lam = (float(mixed[0, 0, 0, 0]) - 40.0) / (10.0 - 40.0)   # λ·10 + (1 − λ)·40
    assert float(mixed_targets[0, 0]) == pytest.approx(lam, abs=1e-5) and 0.0 <= lam <= 1.0


# -- EMA -------------------------------------------------------------------------------------
def _closed_form(weights, decays):
  """Σ_t w_t (1 − d_t) Π_{s>t} d_s, the EMA after updates with decays d_1..d_N (d_1 = 0)."""
  out = 0.0
  for t, w in enumerate(weights):
    out = out + w * (1.0 - decays[t]) * np.prod(decays[t + 1:])
  return out


def test_ema_decay_is_timms_model_ema_v3():
  """`ModelEmaV3.get_decay(step)` for step = 1, 2, ...: 0, then the decay or its warm-up."""
  for warmup in (False, True):
    ours = [float(ema_lib.decay_at(t, 0.999, warmup, 1.0, 2.0 / 3.0)) for t in range(5)]
    steps = [max(0, s - 1) for s in range(1, 6)]
    want = [0.0 if s <= 0 else (min(1 - (1 + s) ** (-2 / 3), 0.999) if warmup else 0.999) for s in steps]
    assert ours == pytest.approx(want, abs=1e-7)


def test_ema_after_n_steps_equals_its_closed_form(data_dir, fast_compile):
  """In the engine's step (every piece on: the packing test's second run, the same program), the
  EMA after 5 updates is the closed form over the weights after each update."""
  config = all_on_config(data_dir, seed=1, **PACKED_VALUES)
  exp = build.experiment(config)
  state = state_lib.create_train_state(exp.model, exp.tx, exp.mesh, exp.image_shape, 1, ema=True)
  fn = step_lib.build_train_step(exp.train_model, exp.tx, config, exp.mesh, exp.pipeline.preprocess, exp.num_classes)
  batches, weights = exp.pipeline.train_iterator(1), []
  sums = step_lib.new_metrics(step_lib.zero_train_metrics, exp.mesh)
  for _ in range(5):
    state, sums = fn(state, sums, next(batches))
    weights.append(jax.device_get(ema_lib.initial(state.params, state.batch_stats)))
  decays = [float(ema_lib.decay_at(t, 0.99, True, 1.0, 2.0 / 3.0)) for t in range(5)]
  assert decays[0] == 0.0 and 0 < decays[1] < decays[4] <= 0.99
  want = jax.tree.map(lambda *ws: _closed_form([np.asarray(w, np.float64) for w in ws], decays), *weights)
  assert relative_l2(state.ema, want) <= 1e-6


# -- accumulation ---------------------------------------------------------------------------
def test_accumulated_gradients_equal_the_large_batch_with_micro_batch_bn_groups(data_dir, fast_compile):
  """Two micro-batches of 16 (rows i::2) average to the gradient of the whole batch of 32 whose
  ghost BatchNorm groups are those micro-batches; the BN statistics are updated once per
  micro-batch (docs/training.md, "Recipes": they are not the large batch's)."""
  config = support.smoke_config(data_dir, **{"accumulation_steps": 2, "bn.ghost_batch_size": 16})
  exp = build.experiment(config)
  state = state_lib.create_train_state(exp.model, exp.tx, exp.mesh, exp.image_shape, 0)
  batch = next(exp.pipeline.train_iterator())
  images = exp.pipeline.preprocess(batch["image"], None, False)
  labels = batch["label"]
  accumulated = jax.jit(step_lib.gradients(exp.train_model, config, exp.mesh, exp.num_classes))
  grads, stats, loss, _ = accumulated(state.params, state.batch_stats, images, labels, labels, jax.random.PRNGKey(0))
  large = config.copy_and_resolve_references()
  large.accumulation_steps = 1
  whole = jax.jit(step_lib.gradients(exp.train_model, large, exp.mesh, exp.num_classes))
  order = jnp.concatenate([jnp.arange(0, 32, 2), jnp.arange(1, 32, 2)])   # micro-batch 0, then 1
  want, _, want_loss, _ = whole(state.params, state.batch_stats, images[order], labels[order], labels[order],
                                jax.random.PRNGKey(0))
  assert relative_l2(grads, want) <= 1e-6 and float(loss) == pytest.approx(float(want_loss), rel=1e-6)
  first = whole(state.params, state.batch_stats, images[0::2], labels[0::2], labels[0::2], jax.random.PRNGKey(0))[1]
  second = whole(state.params, first, images[1::2], labels[1::2], labels[1::2], jax.random.PRNGKey(0))[1]
  assert relative_l2(stats, second) <= 1e-6   # the statistics of micro-batch 0, then 1


# -- the default program, validation, packing, the sampler ------------------------------------
def test_default_configs_compile_to_the_program_without_the_new_parts(data_dir):
  """The engine's step for a paper config lowers to the same text as the step composed of the
  parts the engine had before (SGD chain, cross-entropy on labels, the dataset's preprocessing,
  no averaging): every new part's off-switch adds nothing to the program."""
  config = support.smoke_config(data_dir, **{"label_smoothing": 0.1, "optimizer.weight_decay_exclude": "bias$"})
  exp = build.experiment(config)
  mask = lambda params: optim.weight_decay_mask(params, "bias$")
  sgd = optax.chain(optax.add_decayed_weights(1e-4, mask=mask), optax.sgd(exp.schedule, momentum=0.9, nesterov=False))
  state = state_lib.create_train_state(exp.model, exp.tx, exp.mesh, exp.image_shape, 0)
  args = (state, step_lib.new_metrics(step_lib.zero_train_metrics, exp.mesh), next(exp.pipeline.train_iterator()))
  engine = step_lib.build_train_step(exp.train_model, exp.tx, config, exp.mesh, exp.pipeline.preprocess, 10)
  before = step_lib.compiled(step_lib.alone(step_lib.train_step(
      step_lib.gradients(exp.train_model, config, exp.mesh, 10,
                         loss=lambda logits, labels: parts.cross_entropy(logits, labels, 10, 0.1)),
      step_lib.optimizer_update([sgd]),
      lambda batch, rng, run: (exp.pipeline.preprocess(batch["image"], rng, True), batch["label"]))), exp.mesh)
  assert engine.lower(*args).as_text() == before.lower(*args).as_text()


@pytest.mark.parametrize("overrides, message", [
    ({"optimizer.name": "adam"}, "optimizer.name='adam' is not one of ('sgd', 'adamw', 'lamb', 'lars')"),
    ({"loss": "ce"}, "loss='ce' is not one of ('cross_entropy', 'binary_cross_entropy')"),
    ({"augmentation.policy": "autoaugment"}, "augmentation.policy='autoaugment' is not one of"),
    ({"accumulation_steps": 3}, "accumulation_steps=3 must be a positive integer dividing global_batch_size=32"),
    ({"accumulation_steps": 4}, "micro-batches of 8 examples are not a multiple of bn.ghost_batch_size=16"),
    ({"ema.decay": 1.0}, "ema.decay=1.0 must be a finite number in [0, 1)"),
    ({"ema.keep_best": True}, "ema.keep_best=True ranks checkpoints by the EMA's error, but ema.decay=0"),
    ({"augmentation.magnitude": 31}, "augmentation.magnitude=31 must be a finite number in [0, 30]"),
    ({"augmentation.switch_prob": 1.5}, "augmentation.switch_prob=1.5 must be a finite number in [0, 1]"),
    ({"optimizer.clip_grad_norm": -1.0}, "optimizer.clip_grad_norm=-1.0 must be a finite number in [0, inf)"),
    ({"data.repeated_augmentation": 0}, "data.repeated_augmentation=0 must be a positive integer (1: off)"),
])
def test_bad_recipe_fields_are_refused_in_one_line(data_dir, overrides, message):
  config = support.smoke_config(data_dir, **{"bn.ghost_batch_size": 16, **overrides})
  with pytest.raises(rj.train.ConfigError) as info:
    rj.train.validate(config)
  assert message in str(info.value) and "\n" not in str(info.value)


def test_value_fields_pack_and_structure_fields_are_refused_naming_them(data_dir):
  base = support.smoke_config(data_dir, **ALL_ON)
  values = support.smoke_config(data_dir, seed=1, **{**ALL_ON, **PACKED_VALUES, "augmentation.random_erasing": 0.5})
  packing.check_packable([base, values])
  assert packing.groups([base, values]) == [[0, 1]]
  for key, value, named in (("ema.decay", 0.0, "EMA"), ("augmentation.cutmix_alpha", 0.0, "CutMix"),
                            ("optimizer.name", "lars", "optimizer.name"), ("loss", "cross_entropy", "loss"),
                            ("accumulation_steps", 1, "accumulation_steps")):
    other = support.smoke_config(data_dir, seed=1, **{**ALL_ON, key: value})
    with pytest.raises(rj.train.ConfigError, match="cannot be packed") as info:
      packing.check_packable([base, other])
    assert named in str(info.value) and "\n" not in str(info.value)


def test_repeated_augmentation_repeats_each_example_in_a_row_in_the_global_stream(data_dir):
  order = epoch_order(3, 0, 320, 3)
  assert len(order) == 320 and np.array_equal(order[:9], np.repeat(epoch_order(3, 0, 320)[:3], 3))
  config = support.smoke_config(data_dir, **{"data.repeated_augmentation": 3, "data.placement": "host"})
  pipe = build.pipeline(config)
  batch = np.asarray(next(pipe.train_iterator())["image"])
  assert all(np.array_equal(batch[i], batch[i - i % 3]) for i in range(30))
  resumed = TrainIterator(pipe.train_stream)     # a resume at step 4 reads what step 4 reads
  resumed.set_state({**resumed.get_state(), "step": 4})
  straight = pipe.train_iterator()
  for _ in range(4):
    next(straight)
  np.testing.assert_array_equal(np.asarray(next(resumed)["image"]), np.asarray(next(straight)["image"]))
  assert resumed.get_state()["repeated_augmentation"] == 3


def test_fields_added_since_a_run_was_saved_do_not_block_its_resume(data_dir):
  requested = config_lib.to_json_value(support.smoke_config(data_dir))
  saved = json.loads(json.dumps(requested))
  for group, field in (("optimizer", "name"), ("ema", None), ("augmentation", None), (None, "loss")):
    (saved[group] if group and field else saved).pop(field or group)
  defaults = build.field_defaults(support.smoke_config(data_dir))
  assert workdir_lib.config_changes(saved, requested, defaults=defaults) == []
  requested["ema"]["decay"] = 0.99
  assert workdir_lib.config_changes(saved, requested, defaults=defaults) == [("ema.decay", None, 0.99)]


# -- every piece on: resume, packing, EMA evaluation and loading -----------------------------
@pytest.fixture(scope="module")
def all_on_run(data_dir, tmp_path_factory, fast_compile):
  """`all_on_config` trained straight, then again resumed from the step-3 checkpoint of a copy of
  its workdir whose later checkpoints are gone (a process killed after that save)."""
  root = tmp_path_factory.mktemp("all_on")
  config = all_on_config(data_dir)
  straight = rj.train.train(config, root / "straight")
  shutil.copytree(root / "straight", root / "killed")
  shutil.rmtree(root / "killed" / "checkpoints" / "6")
  resumed = rj.train.train(config, root / "killed")
  return config, straight, resumed, root


def test_every_piece_on_resumes_bit_exactly_after_a_kill(all_on_run):
  _, straight, resumed, _ = all_on_run
  assert resumed.step == straight.step == 6
  a, b = jax.device_get(straight.state), jax.device_get(resumed.state)
  assert type(a).__name__ == "EmaTrainState"
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)
  assert straight.eval == resumed.eval and "ema_error" in straight.eval


def test_the_ema_has_its_own_eval_records_ranks_keep_best_and_loads(all_on_run, capsys):
  config, straight, _, root = all_on_run
  workdir = Workdir(root / "straight")
  kinds = {r["kind"] for r in workdir.read_metrics()}
  assert {"eval", "eval_ema"} <= kinds
  checkpointer = workdir.checkpointer(create=False, rank_by=ema_lib.ranking(config))
  try:
    step, error = workdir.best_checkpoint(checkpointer)
    assert error == min(checkpointer.eval_metrics(s)["ema_error"] for s in checkpointer.all_steps())
  finally:
    checkpointer.close()
  for weights, want in (("ema", straight.state.ema), ("raw", {"params": straight.state.params,
                                                               "batch_stats": straight.state.batch_stats})):
    loaded = rj.train.load_network(workdir, weights=weights).variables
    for x, y in zip(jax.tree.leaves(loaded), jax.tree.leaves(jax.device_get(want)), strict=True):
      np.testing.assert_array_equal(x, y)
  with pytest.raises(errors.InputError, match=r"weights='average' is not one of \('raw', 'ema'\)"):
    rj.train.load_network(workdir, weights="average")


def test_every_piece_on_packed_step_equals_its_unpacked_step(data_dir, fast_compile):
  cfgs = [all_on_config(data_dir), all_on_config(data_dir, seed=1, **PACKED_VALUES)]
  diffs, same_data, losses = test_packed.packed_vs_alone(cfgs, start_step=1)
  assert all(same_data) and max(diffs) <= 1e-6, diffs
  for packed, alone in losses:
    assert packed == pytest.approx(alone, rel=1e-5)


# -- the recipes -----------------------------------------------------------------------------
RECIPES = ("cifar10_preact_resnet18_mixup", "imagenet_resnet50_rsb_a1", "imagenet_resnet50_rsb_a2",
           "imagenet_resnet50_rsb_a3", "imagenet_resnet50_goyal", "imagenet_resnet50_mlperf_lars")


def test_every_recipe_has_its_published_number():
  assert set(RECIPES) == set(paper.RECIPES) and set(RECIPES) <= set(configs.names())
  a1, a3 = configs.load("imagenet_resnet50_rsb_a1"), configs.load("imagenet_resnet50_rsb_a3")
  assert (a1.optimizer.name, a1.loss, a1.global_batch_size) == ("lamb", "binary_cross_entropy", 2048)
  assert a1.num_epochs == 600 and a1.data.repeated_augmentation == 3
  assert (a1.model.drop_path_rate, a1.model.drop_path_rule, "drop_path_rate" in a3.model) == (0.05, "timm", False)
  assert (a3.data.image_size, a3.data.eval_image_size, a3.optimizer.learning_rate) == (160, 224, 8e-3)
  goyal = configs.load("imagenet_resnet50_goyal")
  assert optim.peak_learning_rate(goyal) == pytest.approx(3.2)
