"""The CPU-only notice: its text, when it is printed, and that `resnet-jax train` prints it on a CPU."""
import pathlib

import jax
import jax.numpy as jnp
import pytest

from resnet_jax import cli
from resnet_jax.data import testing as data_testing
from resnet_jax.runtime import cpu_notice

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_notice_text_for_the_papers_resnet20_on_a_small_cpu():
  text = cpu_notice.notice_text(64_000, 128, 285.0, "cifar10_resnet20")
  assert text == (
      "no accelerator: JAX runs on the CPU, where the remaining 64,000 steps of 128 take about 8.0 hours "
      "at 285 img/s; a one-minute run: resnet-jax train --config cifar10_resnet20:smoke --workdir /tmp/smoke; "
      "a ten-minute one: resnet-jax train --config cifar10_resnet20 --config.num_steps=1300 --workdir DIR")
  # A short run gets its duration only; a spec with a variant or a path keeps its file.
  assert cpu_notice.notice_text(100, 32, 3200.0, "cifar10_resnet20:smoke") == (
      "no accelerator: JAX runs on the CPU, where the remaining 100 steps of 32 take less than 10 seconds "
      "at 3,200 img/s")
  assert "--config configs/x.py:smoke " in cpu_notice.notice_text(10_000, 128, 100.0, "configs/x.py")
  assert "--config NAME:smoke" in cpu_notice.notice_text(10_000, 128, 100.0)


def test_the_notice_says_when_other_work_makes_the_machine_busy():
  """Measured on a loaded machine (load average 7.2 on 2 cores) a run takes far longer than on a
  quiet one: the line says so, where its duration alone read as the machine's (issue 37)."""
  busy = cpu_notice.notice_text(64_000, 128, 82.0, "cifar10_resnet20", load=(7.2, 2))
  assert "take about 27.8 hours at 82 img/s (the machine is busy: load average 7.2 on 2 cores; it is faster on a " \
         "quiet one); a one-minute run" in busy
  assert "busy" not in cpu_notice.notice_text(64_000, 128, 420.0, "cifar10_resnet20", load=(2.4, 2))


@pytest.mark.parametrize("seconds, text", [(3, "less than 10 seconds"), (40, "about 40 seconds"),
                                           (1500, "about 25 minutes"), (28_800, "about 8.0 hours")])
def test_describe_duration(seconds, text):
  assert cpu_notice.describe_duration(seconds) == text


class FakeClock:
  def __init__(self, step_seconds):
    self.now, self.step_seconds = 0.0, step_seconds

  def __call__(self):
    self.now += self.step_seconds
    return self.now


@pytest.mark.parametrize("backend, printed", [("cpu", 1), ("gpu", 0), ("tpu", 0)])
def test_printed_once_from_the_first_steps_speed_on_cpu_only(backend, printed, monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  lines = []
  notice = cpu_notice.CpuNotice(total_steps=64_000, batch_size=128, print_fn=lines.append,
                                config_spec="cifar10_resnet20", clock=FakeClock(0.5))
  state = jnp.zeros(3)
  for step in range(1, 40):
    notice.after_step(step, state)
  assert len(lines) == printed
  if printed:  # 0.5 s per step of 128: 256 img/s; step 1 (compilation) is not measured
    assert lines[0].startswith("no accelerator: JAX runs on the CPU, where the remaining 63,993 steps of "
                               "128 take about 8.9 hours at 256 img/s")


def test_nothing_when_the_run_ends_before_the_speed_is_known(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  lines = []
  notice = cpu_notice.CpuNotice(total_steps=3, batch_size=8, print_fn=lines.append, clock=FakeClock(1.0))
  for step in range(1, 4):
    notice.after_step(step, jnp.zeros(1))
  assert lines == []


def test_resnet_jax_train_prints_it_on_this_cpu(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(cpu_notice, "MEASURE_SECONDS", 0.0)
  source = data_testing.write_cifar10_binary(tmp_path / "src", num_train_per_batch=16, num_test=20, seed=2)
  assert cli.main(["prepare", "cifar10", "--source", str(source), "--data-dir", str(tmp_path / "tfds"),
                   "--allow-partial"]) == 0
  spec = str(ROOT / "configs" / "cifar10_resnet20.py") + ":smoke"
  rc = cli.main(["train", "--config", spec, "--workdir", str(tmp_path / "run"),
                 f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.data.train_split=train",
                 "--config.data.eval_split=test", "--config.num_steps=5", "--config.eval_batch_size=20"])
  out = capsys.readouterr().out
  assert rc == 0, out
  notices = [line for line in out.splitlines() if line.startswith("no accelerator: JAX runs on the CPU")]
  assert len(notices) == 1 and "remaining 2 steps of 32 take " in notices[0], out
