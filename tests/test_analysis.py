"""The papers' analyses (`rj.analysis`), the `resnet-jax analyze` command and the gradient highway
logged while training, on :smoke networks and the tiny dataset.

What is proven: the per-unit gradient norms are the slopes of the loss (finite differences), and
its shortcut/branch split adds up and is what the architecture implies (all through the shortcut
where the branch is zero, none in a plain net); input gradients of an affine network correlate
perfectly along a line; the layer responses are the stds of the norms' outputs as Flax captures
them; the command and the training log write what they say, where they say.
"""
from __future__ import annotations

import json
import re

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resnet_jax as rj
from resnet_jax import cli, models
from resnet_jax.analysis import highway, probe, responses, shattered
from resnet_jax.storage.workdir import Workdir

import support

pytestmark = pytest.mark.usefixtures("fast_compile")  # what the analyses compute, not how fast

SMOKE = {"stage_sizes": (1, 1, 1), "stage_widths": (4, 8, 16), "stem_width": 4}
X = jax.random.normal(jax.random.key(0), (8, 16, 16, 3))
Y = jnp.arange(8) % 10


def _init(model):
  return model.init(jax.random.key(1), X[:2])


def test_unit_gradient_norms_are_the_slopes_of_the_loss():
  """‖∂L/∂x_l‖ and its shortcut part: the finite-difference slope of L along their direction
  (float64)."""
  with jax.enable_x64():
    model = models.create("cifar_resnet20", dtype=jnp.float64, param_dtype=jnp.float64, **SMOKE)
    variables, x, mode = _init(model), X.astype(jnp.float64), probe.Mode(train=True)
    result = highway.gradient_highway(model, variables, x, Y, mode)
    assert result.units == ["stage1_unit1", "stage2_unit1", "stage3_unit1"]
    units, unit_inputs, shortcut_inputs = probe.unit_shapes(model, variables, x, mode)

    @jax.jit
    def loss(unit_deltas, shortcut_deltas):
      with nn.intercept_methods(probe.perturbed(unit_deltas, shortcut_deltas)):
        return probe.cross_entropy(probe.apply(model, variables, x, mode), Y)
    zeros = lambda shapes: {k: jnp.zeros(v.shape, v.dtype) for k, v in shapes.items()}
    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(zeros(unit_inputs), zeros(shortcut_inputs))
    for u, unit in enumerate(units):
      for which, norm in ((0, result.norm[u]), (1, result.shortcut_norm[u])):
        direction = grads[which][unit] / jnp.linalg.norm(grads[which][unit])
        at = lambda eps: loss(*[{**zeros(s), **({unit: eps * direction} if i == which else {})}
                               for i, s in enumerate((unit_inputs, shortcut_inputs))])
        slope = (at(1e-4) - at(-1e-4)) / 2e-4
        # `norm` is the root mean square over the batch of each example's norm: √B·norm = ‖g‖.
        assert float(slope) == pytest.approx(np.sqrt(len(x)) * norm, rel=1e-6)
    assert np.all(result.shortcut_share > 0) and np.all(result.shortcut_share < 1)


@pytest.mark.parametrize("fields, share", [({"shortcut": "none"}, 0.0),
                                           ({"identity_init": "skipinit", "norm": "none"}, 1.0)])
def test_the_gradient_split_is_what_the_architecture_implies(fields, share):
  """A plain net has no shortcut to carry gradient; at initialisation a SkipInit branch (α = 0)
  passes none, so all of ∂L/∂x_l arrives through the shortcut."""
  model = models.create("cifar_resnet20", **{**SMOKE, **fields})
  result = highway.gradient_highway(model, _init(model), X, Y, probe.Mode(train=True))
  np.testing.assert_array_equal(result.shortcut_share, share)
  assert np.all(result.norm > 0)


@pytest.mark.parametrize("shortcut", ["B", "C"])
def test_a_projection_shortcut_carries_gradient_in_post_activation_units(shortcut):
  """Its 1×1 convolution reads the unit's input (passed as `preactivated` too): the gradient
  through it is the shortcut's, not the branch's."""
  model = models.create("cifar_resnet20", shortcut=shortcut, **SMOKE)
  result = highway.gradient_highway(model, _init(model), X, Y, probe.Mode(train=True))
  assert np.all(result.shortcut_share > 0.05)


def test_a_fixup_network_sends_no_gradient_to_its_units_at_initialisation():
  """Its classifier starts at 0 (Zhang et al. 2019, rule 1): ∂L/∂x_l = 0, reported as NaN/None."""
  model = models.create("cifar_fixup_resnet20", **SMOKE)
  result = highway.gradient_highway(model, _init(model), X, Y, probe.Mode(train=True))
  assert not np.any(result.norm) and np.isnan(result.spread)
  assert json.loads(json.dumps(result.to_dict(), allow_nan=False))["relative_norm"] == [None] * 3


def test_an_affine_network_has_perfectly_correlated_input_gradients():
  """Without ReLUs (and with BatchNorm's statistics held fixed) every f_l is affine in the input:
  its gradient is the same everywhere on a line, correlation 1 at every lag and depth."""
  model = models.create("cifar_resnet20", act=lambda x: x, **SMOKE)
  result = shattered.gradient_correlations(model, _init(model), X[:4], probe.Mode(train=True), points=5)
  np.testing.assert_allclose(result.correlation, 1.0, atol=1e-5)
  assert result.correlation.shape == (3, 4) and (result.lines, result.points) == (2, 5)


def test_lines_run_between_the_pairs_of_images_and_correlations_are_pearsons():
  inputs, step = shattered.lines_between(X[:4], 5)
  np.testing.assert_allclose(inputs[np.array([0, 4, 5, 9])], X[:4], atol=1e-6)
  np.testing.assert_allclose(inputs[2], (X[0] + X[1]) / 2, atol=1e-6)
  assert step == pytest.approx(float(jnp.mean(jnp.linalg.norm((X[1::2] - X[0::2])[:2].reshape(2, -1), axis=1))
                                     / 4 / jnp.mean(jnp.linalg.norm(X[:4].reshape(4, -1), axis=1))), rel=1e-5)
  a, b = np.random.default_rng(0).normal(size=(2, 50))
  grads = jnp.asarray(np.stack([a, b, a]).reshape(3, 5, 10))
  corr = np.asarray(shattered._correlations(grads, 3))  # pylint: disable=protected-access
  np.testing.assert_allclose(corr, [np.corrcoef(a, b)[0, 1], 1.0], rtol=1e-5)


def test_layer_responses_are_the_stds_of_each_3x3_layers_norm_output():
  """Checked against Flax's own `capture_intermediates`: the stem's BN and both BNs of each basic
  unit in a CIFAR net; the middle BN only of a bottleneck (its 3×3)."""
  for name, want in (("cifar_resnet20", ["stem_bn", "bn1", "bn2"]), ("cifar_preact_resnet164", ["stem_bn", "bn2"])):
    model = models.create(name, **SMOKE, unit_order="original")
    variables = _init(model)
    result = responses.layer_responses(model, variables, X, probe.Mode(train=False), batch_size=3)
    _, state = model.apply(variables, X, capture_intermediates=lambda m, _: isinstance(m, models.BatchNorm))
    captured = {"/".join(path[:-1]): out[0] for path, out in traverse_util.flatten_dict(state["intermediates"]).items()}
    expected = [k for k in result.layers if k.split("/")[-1] in want]
    assert result.layers == expected and len(expected) == (4 if name == "cifar_preact_resnet164" else 7)
    for layer, std in zip(result.layers, result.std):
      np.testing.assert_allclose(std, np.std(np.asarray(captured[layer], np.float64)), rtol=1e-5)


def test_analyze_writes_figures_and_json_for_configs_and_workdirs(data_dir, tmp_path, capsys):
  """Configs at initialisation (training-mode BN) and a workdir's init and every checkpoint
  (evaluation mode); the run itself logged its gradient highway every 2 steps."""
  workdir = tmp_path / "run"
  rj.train.train(support.smoke_config(data_dir, num_steps=4, checkpoint_every_steps=2, log_every_steps=2,
                                      gradient_highway_every_steps=2, **SMOKE_MODEL), workdir)
  logged = [r for r in Workdir(workdir).read_metrics() if r["kind"] == "gradient_highway"]
  assert [r["step"] for r in logged] == [2, 4]
  units = ["stage1_unit1", "stage2_unit1", "stage3_unit1"]
  assert set(logged[0]) >= {f"relative_norm/{u}" for u in units} | {f"shortcut_share/{u}" for u in units}
  assert logged[0]["relative_norm/stage3_unit1"] == 1.0
  tags = _tensorboard_scalars(workdir)
  assert tags["gradient_highway/relative_norm/stage1_unit1"] == [2, 4]
  assert tags["gradient_highway/shortcut_share/stage3_unit1"] == [2, 4]
  out = tmp_path / "analysis"
  argv = ["analyze", "--config", "cifar10_plain20:smoke", "--label", "plain", "--workdir", str(workdir),
          "--step", "all", "--with-init", "--data-dir", str(data_dir), "--split", "test", "--images", "16", "--points", "4",
          "--out", str(out)]
  assert cli.main(argv) == 0
  report = json.loads((out / "analysis.json").read_text())
  labels = ["plain", "run, initialisation", "run, step 2", "run, step 4"]
  assert [s["label"] for s in report["subjects"]] == labels
  for analysis, figure in (("highway", "gradient_highway.png"), ("shattered", "shattered_gradients.png"),
                           ("responses", "layer_responses.png")):
    assert (out / figure).read_bytes()[:4] == b"\x89PNG" and report["results"][analysis]["figure"] == figure
    by = report["results"][analysis]["by_subject"]
    assert list(by) == labels
    assert "training-mode" in by["plain"]["mode"] or "analysis batch" in by["plain"]["mode"]
    assert "running statistics" in by["run, step 4"]["mode"]
  assert report["subjects"][3]["weights"].startswith("checkpoint of step 4")
  assert "the first 16 images of cifar10 'test' (50 available)" in report["results"]["highway"]["note"]
  assert {"commit", "device", "wall_seconds"} <= set(report["provenance"])
  assert str(out / "analysis.json") in capsys.readouterr().out
  for analysis in ("highway", "shattered", "responses"):  # the figures drawn again from the JSON alone
    again = rj.analysis.figures.replot(out / "analysis.json", analysis, tmp_path / f"again_{analysis}.png")
    assert again.read_bytes()[:4] == b"\x89PNG"


SMOKE_MODEL = {"model.stage_widths": (4, 8, 8)}


def _tensorboard_scalars(workdir):
  """{tag: [steps]} of every scalar in the run's TensorBoard event files (TFRecord framing:
  length, its CRC, the serialised Event, its CRC)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  tags = {}
  for path in sorted((workdir / "tensorboard").glob("events.out.tfevents.*")):
    data, at = path.read_bytes(), 0
    while at < len(data):
      length = int.from_bytes(data[at:at + 8], "little")
      event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
      at += 12 + length + 4
      for value in event.summary.value:
        tags.setdefault(value.tag, []).append(event.step)
  return tags


def test_the_gradient_highway_log_is_off_by_default_and_then_records_nothing(data_dir, tmp_path):
  assert rj.configs.load("cifar10_resnet20").gradient_highway_every_steps == 0
  rj.train.train(support.smoke_config(data_dir, num_steps=2, log_every_steps=1, **SMOKE_MODEL), tmp_path / "run")
  kinds = {r["kind"] for r in Workdir(tmp_path / "run").read_metrics()}
  assert "train" in kinds and "gradient_highway" not in kinds
  tags = _tensorboard_scalars(tmp_path / "run")
  assert any(t.startswith("train/") for t in tags) and not any(t.startswith("gradient_highway") for t in tags)


def test_a_negative_gradient_highway_period_is_refused():
  with pytest.raises(rj.errors.InputError, match="gradient_highway_every_steps=-1 must not be negative"):
    rj.train.validate(rj.configs.load("cifar10_resnet20:smoke", {"gradient_highway_every_steps": -1}))


@pytest.mark.parametrize("argv, message", [
    (["--config", "no_such_config"], "unknown config 'no_such_config'"),
    (["--workdir", "{tmp}/absent"], "absent/config.json does not exist"),
    (["--config", "cifar10_resnet20:smoke", "--images", "0"], "--images 0: must be at least 1"),
    ([], "give at least one --config or --workdir")])
def test_analyze_refuses_bad_input_in_one_line(argv, message, tmp_path, capsys):
  argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
  assert cli.main(["analyze", *argv, "--out", str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("step", ["banana", "-1", "1.5"])
def test_a_bad_checkpoint_step_is_refused_before_anything_is_read(step):
  with pytest.raises(rj.errors.InputError, match=f"--step '{re.escape(step)}': give latest, best, all or a step"):
    rj.analysis.run.checkpoint_steps("/no/such/workdir", step)
