"""rj.compare: configs per variant, resume/skip of finished runs, the table and the figure."""
from __future__ import annotations

import json
import pathlib

import pytest

import resnet_jax as rj
from resnet_jax.paper import PaperResult


def test_study_configs_come_from_rj_configs():
  study = rj.compare(base="cifar10_resnet110:smoke", variants={"gate": {"model.shortcut": "gate"},
                                                            "lr": {"optimizer.learning_rate": "0.05"}},
                     workdir="/nonexistent", run=False)
  assert study.configs["gate"].to_dict() == rj.configs.load(
      "cifar10_resnet110:smoke", {"model.shortcut": "gate"}).to_dict()
  assert study.configs["lr"].optimizer.learning_rate == 0.05
  with pytest.raises(ValueError, match=r"optimizer\.learning_rte.*did you mean optimizer\.learning_rate"):
    rj.compare(base="cifar10_resnet20", variants={"x": {"optimizer.learning_rte": 0.05}}, run=False)


def _fake_train(calls):
  """Stands in for resnet_jax.train.train: writes a metrics file and returns final metrics."""
  def train(config, workdir):
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    calls.append((config.model.get("shortcut"), config.seed, config.num_steps))
    error = {"B": 7.0, "gate": 9.0}[config.model.shortcut] + config.seed
    with open(workdir / "metrics.jsonl", "w") as f:
      for step in (10, 20):
        f.write(json.dumps({"step": step, "kind": "train", "loss": 2.0 / step}) + "\n")
        f.write(json.dumps({"step": step, "kind": "eval", "error": error + 20 - step}) + "\n")
    return rj.train.RunResult(step=config.num_steps, workdir=str(workdir), eval={"error": error, "top5_error": 0.5},
                              train={"loss": 0.1})
  return train


def test_compare_trains_each_variant_and_seed_once_and_tabulates(tmp_path):
  variants = {"identity": {"model.shortcut": "B"}, "gate": {"model.shortcut": "gate"}}
  study = rj.compare(base="cifar10_resnet110", variants=variants, seeds=(0, 1), workdir=tmp_path,
                     overrides={"num_steps": 20}, paper={"identity": 6.61, "gate": PaperResult(8.70, "T1")},
                     run=False)
  calls = []
  study.run(train_fn=_fake_train(calls), log=lambda _: None)
  assert sorted(calls) == [("B", 0, 20), ("B", 1, 20), ("gate", 0, 20), ("gate", 1, 20)]
  record = json.loads((tmp_path / "gate" / "seed1" / "result.json").read_text())
  assert record["eval"]["error"] == 10.0 and record["config"]["model"]["shortcut"] == "gate"
  assert {"resnet_jax", "commit", "device", "wall_time_s", "seed"} <= set(record)

  summary = study.summary()
  assert summary["identity"]["mean"] == pytest.approx(7.5)
  assert summary["identity"]["std"] == pytest.approx(0.7071, rel=1e-3)
  table = study.table()
  assert "| identity | 2 of 2 | 7.00 | 7.50 ± 0.71 | 7.50 | 6.61 | +0.89 (mean) |" in table
  assert "| gate | 2 of 2 | 9.00 | 9.50 ± 0.71 | 9.50 | 8.70 | +0.80 (mean) |" in table
  assert "Not finished" not in table

  # Rerunning skips finished runs.
  again = []
  rj.compare(base="cifar10_resnet110", variants=variants, seeds=(0, 1), workdir=tmp_path,
             overrides={"num_steps": 20}, run=False).run(train_fn=_fake_train(again), log=lambda _: None)
  assert again == []

  png = study.plot(tmp_path / "curves.png")
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_variant_can_train_from_another_config(tmp_path):
  study = rj.compare(base="cifar10_resnet20", variants={"plain56": {"config": "cifar10_plain56"}, "resnet20": {}},
                     workdir=tmp_path, overrides=lambda c: {"num_steps": c.num_steps // 64}, run=False)
  assert study.configs["plain56"].model.name == "cifar_plain56"
  assert study.configs["resnet20"].model.name == "cifar_resnet20"
  assert study.configs["plain56"].num_steps == 1000


def test_table_marks_runs_not_done_and_failed_paper_results(tmp_path):
  study = rj.compare(base="cifar10_resnet110", variants={"dropout": {"model.shortcut": "dropout"}},
                     workdir=tmp_path, paper={"dropout": PaperResult(None, "T1", "fail")}, run=False)
  assert "| dropout | 0 of 1 | – | – | – | fail (>20) | – |" in study.table()
  assert "dropout seed 0: not started" in study.table()


def test_tables_compare_like_with_like_and_mark_unfinished_runs(tmp_path):
  from resnet_jax import paper  # pylint: disable=g-import-not-at-top
  variants = {"original": {"model.shortcut": "B"}, "gate": {"model.shortcut": "gate"}}
  study = rj.compare(base="cifar10_resnet110", variants=variants, seeds=(0, 1, 2), workdir=tmp_path,
                     overrides={"num_steps": 20}, run=False,
                     paper={"original": paper.IDENTITY_SHORTCUTS["original"],
                            "gate": paper.CIFAR10_DEPTH["cifar_resnet110"]})
  calls = []
  study.run(train_fn=_fake_train(calls), log=lambda _: None)
  (tmp_path / "gate" / "seed2" / "result.json").unlink()          # as if still training, at step 12
  (tmp_path / "gate" / "seed2" / "checkpoints" / "12").mkdir(parents=True)
  table = study.table()
  # The paper's own format: "median of 5" for Identity Mappings, "best (mean±std)" for Table 6.
  assert "| original | 3 of 3 | 7.00 | 8.00 ± 1.00 | 8.00 | 6.61, median of 5 runs | +1.39 (median) |" in table
  assert "| gate | 2 of 3 | 9.00 | 9.50 ± 0.71 | 9.50 | 6.43 (6.61±0.16), best (mean±std) of 5 runs | " \
         "+2.57 (best) |" in table
  assert "Not finished (run the same command again to continue): gate seed 2: step 12." in table
  assert study.summary()["gate"]["unfinished"] == {2: 12}


def test_packed_groups_of_a_study(tmp_path):
  variants = {"A": {}, "B": {"model.shortcut": "B"}, "lr": {"optimizer.learning_rate": 0.05}}
  study = rj.compare(base="cifar10_resnet20:smoke", variants=variants, seeds=(0, 1), workdir=tmp_path, run=False)
  groups = study.pack_groups(study.runs, pack=True)
  # Shapes decide: A and lr share one program (values differ), B has a projection (other shapes).
  assert [[(r.variant, r.seed) for r in g] for g in groups] == [
      [("A", 0), ("A", 1), ("lr", 0), ("lr", 1)], [("B", 0), ("B", 1)]]
  assert all(len(g) == 1 for g in study.pack_groups(study.runs, pack=False))
  assert all(len(g) == 1 for g in study.pack_groups(study.runs, pack="auto"))  # a CPU: no packing
  with pytest.raises(ValueError, match="pack='yes' is not one of"):
    study.pack_groups(study.runs, pack="yes")
