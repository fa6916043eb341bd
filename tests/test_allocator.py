"""The CPU allocator choice (resnet_jax.runtime.allocator): when it re-executes, and that it changes no bits."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from resnet_jax.runtime import allocator


def _finder(available):
  return lambda kind: available.get(kind)


LIBS = {"jemalloc": "/usr/lib/libjemalloc.so.2", "tcmalloc": "/usr/lib/libtcmalloc_minimal.so.4"}


def test_auto_prefers_jemalloc_on_cpu_only_linux():
  env, note = allocator.plan({}, platform="linux", accelerators=[], finder=_finder(LIBS))
  assert env["LD_PRELOAD"] == LIBS["jemalloc"]
  assert env["MALLOC_CONF"] == allocator.JEMALLOC_CONF
  assert env[allocator.ACTIVE_ENV] == "jemalloc"
  assert "jemalloc" in note


def test_auto_falls_back_to_tcmalloc_and_keeps_existing_preload():
  env, _ = allocator.plan({"LD_PRELOAD": "/x/libfoo.so"}, platform="linux", accelerators=[],
                          finder=_finder({"tcmalloc": LIBS["tcmalloc"]}))
  assert env["LD_PRELOAD"] == f"{LIBS['tcmalloc']}:/x/libfoo.so"
  assert "MALLOC_CONF" not in env


def test_user_malloc_conf_is_kept_after_ours():
  env, _ = allocator.plan({"MALLOC_CONF": "narenas:2"}, platform="linux", accelerators=[],
                          finder=_finder(LIBS))
  assert env["MALLOC_CONF"] == f"{allocator.JEMALLOC_CONF},narenas:2"


@pytest.mark.parametrize("environ,accelerators,platform,why", [
    ({}, ["jax-cuda12-plugin"], "linux", "accelerator"),
    ({"JAX_PLATFORMS": "cuda,cpu"}, [], "linux", "accelerator"),
    ({allocator.ENV: "system"}, [], "linux", "system"),
    ({}, [], "darwin", "not Linux"),
    ({"LD_PRELOAD": "/opt/libjemalloc.so.2"}, [], "linux", "already"),
    ({allocator.ACTIVE_ENV: "jemalloc"}, [], "linux", "jemalloc"),
])
def test_no_reexec(environ, accelerators, platform, why):
  env, note = allocator.plan(environ, platform=platform, accelerators=accelerators,
                             finder=_finder(LIBS))
  assert env is None
  assert why in note


def test_jax_platforms_cpu_wins_over_installed_plugins():
  env, _ = allocator.plan({"JAX_PLATFORMS": "cpu"}, platform="linux",
                          accelerators=["jax-cuda12-plugin"], finder=_finder(LIBS))
  assert env is not None


def test_missing_library_in_auto_mode_says_how_to_install():
  env, note = allocator.plan({}, platform="linux", accelerators=[], finder=_finder({}))
  assert env is None and "apt install libjemalloc2" in note


def test_bad_and_unavailable_choices_are_one_line_errors():
  with pytest.raises(allocator.AllocatorError, match=r"RESNET_JAX_ALLOCATOR='fast' is not one of auto"):
    allocator.plan({allocator.ENV: "fast"}, platform="linux", accelerators=[], finder=_finder(LIBS))
  with pytest.raises(allocator.AllocatorError, match="apt install libtcmalloc-minimal4"):
    allocator.plan({allocator.ENV: "tcmalloc"}, platform="linux", accelerators=[],
                   finder=_finder({"jemalloc": LIBS["jemalloc"]}))


def test_accelerator_package_pattern():
  for name in ("jax-cuda12-plugin", "jax_cuda13_plugin", "jax-cuda12-pjrt", "libtpu", "jax-rocm60-plugin"):
    assert allocator.ACCELERATOR_PACKAGES.match(name), name
  for name in ("jax", "jaxlib", "flax", "cuda-python"):
    assert not allocator.ACCELERATOR_PACKAGES.match(name), name


_TRAIN_FEW_STEPS = textwrap.dedent("""
  import hashlib, jax, jax.numpy as jnp, numpy as np, optax
  from resnet_jax import models
  model = models.create("cifar_resnet20", num_classes=10, stage_sizes=(1, 1, 1), stage_widths=(8, 16, 32),
                        stem_width=8)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(32, 32, 32, 3)), jnp.float32)
  y = jnp.asarray(np.arange(32) % 10)
  v = model.init(jax.random.key(0), x, train=False)
  tx = optax.sgd(0.1, 0.9)
  params, stats, opt = v["params"], v["batch_stats"], tx.init(v["params"])
  @jax.jit
  def step(params, stats, opt):
    def loss(p):
      logits, upd = model.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd["batch_stats"]
    (l, stats), g = jax.value_and_grad(loss, has_aux=True)(params)
    u, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, u), stats, opt
  for _ in range(3):
    params, stats, opt = step(params, stats, opt)
  h = hashlib.sha256()
  for leaf in jax.tree.leaves((params, stats)):
    h.update(np.asarray(leaf).tobytes())
  print(h.hexdigest())
""")


def test_preloaded_allocator_changes_no_bits():
  """Three train steps give bit-identical parameters with glibc malloc and with jemalloc/tcmalloc."""
  results = {}
  for choice in ("system", "jemalloc", "tcmalloc"):
    library = None if choice == "system" else allocator.find_library(choice)
    if choice != "system" and library is None:
      continue
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("LD_PRELOAD", None)
    if library:
      env.update(allocator.preload_environment(choice, library, {}))
    out = subprocess.run([sys.executable, "-c", _TRAIN_FEW_STEPS], env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    results[choice] = out.stdout.strip().splitlines()[-1]
  if len(results) < 2:
    pytest.skip("neither jemalloc nor tcmalloc is installed (apt install libjemalloc2)")
  assert len(set(results.values())) == 1, results


@pytest.mark.parametrize("environ, planned, printed", [
    ({}, (None, "allocator: system malloc (an accelerator backend is installed)"), None),
    ({allocator.ENV: "system"}, (None, "allocator: system malloc (RESNET_JAX_ALLOCATOR=system)"), None),
    ({}, (None, "allocator: /opt/libjemalloc.so.2 (LD_PRELOAD already set)"), None),
    ({allocator.ACTIVE_ENV: "jemalloc"}, (None, "allocator: jemalloc (LD_PRELOAD)"),
     "allocator: jemalloc (LD_PRELOAD)"),
    ({}, (None, allocator.INSTALL_HINT), allocator.INSTALL_HINT),
])
def test_a_command_mentions_the_allocator_only_when_it_changed_or_could(environ, planned, printed, monkeypatch):
  monkeypatch.setattr(allocator, "plan", lambda env: planned)
  monkeypatch.setattr(os, "environ", dict(environ))
  assert allocator.reexec_if_useful(["train"]) == printed


def _which(*present):
  return lambda name: f"/usr/bin/{name}" if name in present else None


@pytest.mark.parametrize("facts, command, line", [
    (dict(finder=_finder(LIBS)), [], ""),
    (dict(platform="darwin"), [], ""),
    (dict(accelerators=["jax-cuda12-plugin"]), [], ""),
    (dict(is_root=True, which=_which("apt-get")), ["apt-get", "install", "-y", "-q", "libjemalloc2"],
     "installing libjemalloc2"),
    (dict(is_root=False, which=_which("apt-get", "sudo")),
     ["sudo", "-n", "apt-get", "install", "-y", "-q", "libjemalloc2"], "installing libjemalloc2"),
    (dict(is_root=False, which=_which("apt-get")), [], "as root run: apt-get install libjemalloc2"),
    (dict(is_root=True, which=_which()), [], "with the system's package manager"),
])
def test_make_train_installs_jemalloc_where_it_can(facts, command, line):
  facts = {"platform": "linux", "accelerators": [], "finder": _finder({}), **facts}
  got_command, got_line = allocator.setup_steps({}, **facts)
  assert got_command == command
  assert line in got_line and (not line or "~25-40 % slower" in got_line)
  assert "hour" not in got_line  # a run's duration is said once, measured: the CPU notice (issue 37)


def test_setup_updates_apt_once_and_says_how_to_fix_a_failed_install():
  class Run:
    def __init__(self, codes):
      self.codes, self.commands = list(codes), []

    def __call__(self, command, **_):
      self.commands.append(command)
      return subprocess.CompletedProcess(command, self.codes.pop(0))

  facts = dict(platform="linux", accelerators=[], finder=_finder({}), is_root=False, which=_which("apt-get", "sudo"))
  printed = []
  run = Run([100, 0, 0])  # unknown package, then apt-get update, then installed
  assert allocator.setup(run=run, print_fn=lambda line, **_: printed.append(line), **facts)
  assert [c[2:4] for c in run.commands] == [["apt-get", "install"], ["apt-get", "update"], ["apt-get", "install"]]
  assert printed[-1].startswith("installed libjemalloc2")
  run, printed = Run([100, 100]), []  # no network, no sudo rights
  assert not allocator.setup(run=run, print_fn=lambda line, **_: printed.append(line), **facts)
  assert printed[-1] == ("could not install libjemalloc2: " + allocator.SLOWER +
                         "; to fix it run: sudo apt-get install libjemalloc2")
