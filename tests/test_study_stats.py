"""Honest comparisons: paired differences with confidence intervals, the seeds a difference
needs, and a figure that names its split, shows every seed and marks chance and short budgets.

The reference values are computed by hand (the t interval) or come from R's
`power.t.test(delta=, sd=1, sig.level=0.05, power=0.8, type="paired")`, which gives
n = 9.94, 33.37 and 4.22 for delta = 1, 0.5 and 2: 10, 34 and 5 whole seeds.
"""
from __future__ import annotations

import json
import math
import pathlib

import pytest

import resnet_jax as rj
from resnet_jax import stats
from resnet_jax import study_plot


def test_the_interval_is_the_hand_computed_paired_t_interval():
  d = stats.paired_difference({0: 10.0, 1: 10.0, 2: 10.0}, {0: 11.0, 1: 12.0, 2: 13.0}, "b", "a")
  t_975_2 = 4.302652729749464  # Student's t, 2 degrees of freedom, 97.5th percentile (tables)
  assert (d.mean, d.std, d.seeds) == (2.0, 1.0, (0, 1, 2))
  assert d.low == pytest.approx(2.0 - t_975_2 / math.sqrt(3), abs=1e-9)
  assert d.high == pytest.approx(2.0 + t_975_2 / math.sqrt(3), abs=1e-9)
  assert not d.resolved and d.text() == "+2.00 [-0.48, +4.48]"


@pytest.mark.parametrize("delta, seeds", [(1.0, 10), (0.5, 34), (2.0, 5), (-1.0, 10)])
def test_seeds_for_80_percent_power_match_the_paired_t_test(delta, seeds):
  assert stats.seeds_for_power(delta, 1.0) == seeds


def test_a_difference_with_no_spread_or_none_at_all_has_the_obvious_answers():
  assert stats.seeds_for_power(0.0, 1.0) is None and stats.seeds_for_power(1.0, float("nan")) is None
  assert stats.seeds_for_power(0.3, 0.0) == 2
  same = stats.paired_difference({0: 5.0, 1: 6.0}, {0: 5.5, 1: 6.5})
  assert same.resolved and same.low == same.high == 0.5
  one = stats.paired_difference({0: 5.0, 3: 6.0}, {0: 7.0, 4: 1.0})
  assert one.seeds == (0,) and math.isnan(one.low) and not one.resolved and "one seed" in one.text()
  with pytest.raises(ValueError, match="no finished seed in common"):
    stats.paired_difference({0: 5.0}, {1: 5.0})


def _fake_train(errors_by_variant, split="test[:200]", examples=200):
  """Stands in for resnet_jax.train.train: writes a metrics file; the final error by (variant, seed)."""
  def train(config, workdir):
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    error = errors_by_variant[config.model.shortcut][config.seed]
    with open(workdir / "metrics.jsonl", "w") as f:
      for step in (10, 20):
        f.write(json.dumps({"step": step, "kind": "train", "loss": 2.0 / step}) + "\n")
        f.write(json.dumps({"step": step, "kind": "eval", "error": error + 20 - step, "num_examples": examples}) + "\n")
    return rj.train.RunResult(step=config.num_steps, workdir=str(workdir), eval={"error": error}, train={"loss": 0.1})
  return train


def _study(tmp_path, errors_by_variant, seeds):
  variants = {"A": {"model.shortcut": "A"}, "B": {"model.shortcut": "B"}}
  study = rj.compare(base="cifar10_resnet20", variants=variants, seeds=seeds, workdir=tmp_path, run=False,
                     overrides={"num_steps": 20, "data.eval_split": "test[:200]"}, baseline="A")
  study.run(train_fn=_fake_train(errors_by_variant), log=lambda _: None)
  return study


def test_runs_of_one_seed_are_paired_and_an_interval_containing_zero_is_not_resolved(tmp_path):
  # Chance-level noise: B looks 4 points better on average, but the seeds disagree.
  study = _study(tmp_path, {"A": {0: 90.0, 1: 85.0}, "B": {0: 82.0, 1: 85.0}}, seeds=(0, 1))
  d = study.summary()["B"]["vs_baseline"]
  assert d.differences == (-8.0, 0.0) and d.mean == -4.0 and not d.resolved
  table = study.table()
  assert "| variant − A | paired seeds | difference, points (95 % CI) | resolved | seeds for 80 % power |" in table
  assert f"| B | 2 | {d.text()} | not resolved | {d.seeds_for_power} |" in table
  assert d.seeds_for_power == stats.seeds_for_power(-4.0, d.std)


def test_a_consistent_difference_is_resolved(tmp_path):
  study = _study(tmp_path, {"A": {0: 9.0, 1: 8.0, 2: 10.0}, "B": {0: 8.0, 1: 7.1, 2: 8.9}}, seeds=(0, 1, 2))
  d = study.paired("A")["B"]
  assert d.resolved and d.high < 0
  assert "| B | 3 |" in study.table() and "| yes |" in study.table()
  with pytest.raises(ValueError, match="baseline='C' is not a variant; valid: A, B"):
    study.table(baseline="C")


def test_the_figure_names_the_split_shows_chance_near_it_and_marks_a_reduced_budget(tmp_path):
  study = _study(tmp_path, {"A": {0: 90.0, 1: 85.0}, "B": {0: 82.0, 1: 85.0}}, seeds=(0, 1))
  assert study_plot._eval_split(study) == "error on test[:200], 200 images"
  assert study_plot._chance(study) == pytest.approx(90.0)  # CIFAR-10: one guess in ten
  assert study_plot.budget_note(study) == "reduced budget: 20 of 64,000 steps"
  png = study.plot(tmp_path / "curves.png", title="A vs B")
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
