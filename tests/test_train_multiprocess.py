"""Two processes with `jax.distributed` on 127.0.0.1: sharded input, train, checkpoint, restore."""
import json
import os
import pathlib
import sys

import pytest
import support

ROOT = pathlib.Path(__file__).resolve().parents[1]

WORKER = r'''
import json, sys
from resnet_jax import train as rt
from resnet_jax.runtime import mesh as mesh_lib
port, pid, data_dir, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
mesh_lib.initialize_distributed(f"127.0.0.1:{port}", 2, pid)
import jax
from resnet_jax.configs import cifar10_resnet20
config = cifar10_resnet20.get_config("smoke")
config.data.data_dir = data_dir
config.data.train_split, config.data.eval_split = "train", "test"
config.num_steps, config.eval_batch_size, config.log_every_steps = 2, 10, 1
result = rt.train(config, workdir)             # two steps, each process feeding its half of the batch
evaluated = rt.evaluate(workdir)               # restores the checkpoint written by both processes
print(json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                  "devices": jax.device_count(), "step": result.step,
                  "train_eval_error": result.eval["error"], "restored_error": evaluated["error"],
                  "restored_step": evaluated["step"], "num_examples": evaluated["num_examples"]}))
'''


@pytest.mark.multidevice
def test_two_processes_train_save_and_restore(tmp_path):
  from resnet_jax.data import testing as data_testing
  import resnet_jax.data as rjd
  source = data_testing.write_cifar10_binary(tmp_path / "src", num_train_per_batch=32, num_test=30, seed=2)
  rjd.prepare("cifar10", source=source, data_dir=tmp_path / "tfds", allow_partial=True)
  port = support.free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  env.pop("XLA_FLAGS", None)
  outs = support.run_processes([[sys.executable, "-c", WORKER, str(port), str(i), str(tmp_path / "tfds"),
                                 str(tmp_path / "run")] for i in range(2)], env, ROOT)
  assert sorted(o["process"] for o in outs) == [0, 1]
  for o in outs:
    assert o["processes"] == 2 and o["devices"] == 2 and o["step"] == 2 and o["restored_step"] == 2
    assert o["num_examples"] == 30 and o["restored_error"] == o["train_eval_error"]
  # Only process 0 writes logs.
  records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]
