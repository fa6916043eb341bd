"""The full-run report (experiments/results/cifar10_resnet20_full/report.py) reports what the run wrote.

A made-up run of 300 steps in two processes (the first killed without an end event, the
second resumed from step 100 and finished) checks the wall time, resumes, final and best
held-out error, the test line and its consistency check.
"""
import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "results" / "cifar10_resnet20_full" / "report.py"


@pytest.fixture(scope="module")
def report():
  spec = importlib.util.spec_from_file_location("full_run_report", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _write_run(workdir: pathlib.Path) -> None:
  workdir.mkdir()
  config = {"num_steps": 300, "global_batch_size": 128, "data": {"eval_split": "train[45000:]"},
            "schedule": {"boundaries": [150, 225]}}
  (workdir / "config.json").write_text(json.dumps(config))
  t0, t1 = 1000.0, 5000.0
  metrics = [
      {"step": 100, "kind": "train", "time": t0 + 100, "loss": 1.0, "error": 30.0},
      {"step": 100, "kind": "eval", "time": t0 + 105, "loss": 0.9, "error": 25.0, "num_examples": 5000.0},
      {"step": 200, "kind": "train", "time": t0 + 200, "loss": 0.8, "error": 20.0},  # lost: killed
      # resumed from 100: steps 101-200 again, then to the end
      {"step": 200, "kind": "train", "time": t1 + 100, "loss": 0.7, "error": 19.0},
      {"step": 200, "kind": "eval", "time": t1 + 105, "loss": 0.6, "error": 10.0, "num_examples": 5000.0},
      {"step": 300, "kind": "train", "time": t1 + 200, "loss": 0.5, "error": 9.0},
      {"step": 300, "kind": "eval", "time": t1 + 205, "loss": 0.55, "error": 12.0, "num_examples": 5000.0},
  ]
  sessions = [
      {"event": "start", "time": t0, "step": 0, "resumed_from": None, "host": "a", "commit": "abc",
       "device": "1x cpu (cpu), a", "allocator": "jemalloc"},
      {"event": "start", "time": t1, "step": 100, "resumed_from": "x/100", "host": "b", "commit": "abc",
       "device": "1x cpu (cpu), b", "allocator": "jemalloc"},
      {"event": "end", "time": t1 + 210, "step": 300, "reason": "finished", "steps": 200},
  ]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
  (workdir / "sessions.jsonl").write_text("".join(json.dumps(s) + "\n" for s in sessions))


def test_report_of_a_resumed_finished_run(report, tmp_path, capsys):
  workdir = tmp_path / "run"
  _write_run(workdir)
  test_log = tmp_path / "eval_test.log"
  test_log.write_text("some log line\n" + json.dumps(
      {"error": 14.0, "loss": 0.6, "num_examples": 1000, "split": "test", "step": 300, "top5_error": 0.5}) + "\n")
  out = tmp_path / "out"
  assert report.main(["--workdir", str(workdir), "--test-eval", str(test_log), "--out", str(out),
                      "--run-commit", "abcdef"]) == 0
  results = json.loads((out / "results.json").read_text())
  assert results["status"] == "finished"
  assert results["heldout"]["error"] == 12.0 and results["heldout"]["step"] == 300
  assert (results["heldout"]["best_error"], results["heldout"]["best_step"]) == (10.0, 200)
  assert results["heldout"]["standard_error"] == pytest.approx(0.46, abs=0.005)
  assert results["test_1k"]["error"] == 14.0 and results["test_1k"]["num_examples"] == 1000
  assert results["paper"]["error"] == 8.75
  assert (results["processes"], results["resumes"]) == (2, 1)
  first, second = results["segments"]
  assert (first["from_step"], first["to_step"], first["wall_s"]) == (0, 200, 200.0)
  assert first["ended"].startswith("killed")
  assert (second["from_step"], second["to_step"], second["wall_s"], second["ended"]) == (100, 300, 210.0, "finished")
  assert results["wall_time_s"] == 410.0
  assert results["commit"] == "abcdef"
  assert (out / "curves.png").stat().st_size > 10_000
  table = capsys.readouterr().out
  assert "| 12.00 |" in table and "| 14.00 |" in table and "| 8.75 |" in table


def test_report_refuses_a_test_eval_of_another_step(report, tmp_path):
  workdir = tmp_path / "run"
  _write_run(workdir)
  test_log = tmp_path / "eval_test.log"
  test_log.write_text(json.dumps({"error": 14.0, "num_examples": 1000, "split": "test", "step": 200}) + "\n")
  with pytest.raises(SystemExit, match="at step 200; expected split 'test' at the run's last step 300"):
    report.main(["--workdir", str(workdir), "--test-eval", str(test_log), "--out", str(tmp_path / "out")])


def test_unfinished_run_is_reported_as_unfinished(report, tmp_path):
  workdir = tmp_path / "run"
  _write_run(workdir)
  lines = (workdir / "metrics.jsonl").read_text().splitlines()[:-2]  # stop at step 200
  (workdir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
  report.main(["--workdir", str(workdir), "--out", str(tmp_path / "out")])
  results = json.loads((tmp_path / "out" / "results.json").read_text())
  assert results["status"] == "unfinished: step 200 of 300" and results["test_1k"] is None
