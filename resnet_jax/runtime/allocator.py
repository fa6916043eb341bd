"""A faster memory allocator for CPU-only runs: jemalloc or tcmalloc via LD_PRELOAD.

On the CPU backend XLA allocates each step's temporaries as large blocks that glibc
serves with fresh `mmap`s and returns to the kernel after the step, so every step
page-faults through hundreds of MB of new zero pages (about a fifth of the step's
time was kernel page-fault handling in a `perf` profile of a ResNet-20 step).
jemalloc with purging switched off, or tcmalloc, keeps those pages, which made the
ResNet-20 train step about 25-40 % faster on a 2-core machine (see
`experiments/README.md`, "CPU speed"). The allocator does not change any
arithmetic: the parameters after training are bit-identical (tested).

The allocator has to be in place before the process starts, so `resnet-jax train`
and `eval` re-execute themselves once with `LD_PRELOAD` set when all of these hold:

* the machine runs Linux and has `libjemalloc.so.2` or `libtcmalloc(_minimal).so.4`
  (Debian/Ubuntu: `apt install libjemalloc2`);
* JAX will run on the CPU: `JAX_PLATFORMS=cpu`, or no accelerator plugin (CUDA,
  ROCm, TPU) is installed;
* `RESNET_JAX_ALLOCATOR` is unset or `auto` (`system` keeps glibc's malloc,
  `jemalloc` / `tcmalloc` ask for one; asking for one that is missing is an error);
* no jemalloc/tcmalloc is preloaded already.

`make train` installs jemalloc first where it can (`python -m resnet_jax.runtime.allocator`:
Debian/Ubuntu's `libjemalloc2`, as root or with password-less sudo) and otherwise says how
much slower training will be and the one command that fixes it.

Python users get the same by starting Python with the environment of
`preload_environment()`, e.g. `LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
MALLOC_CONF=retain:true,dirty_decay_ms:-1,muzzy_decay_ms:-1 python train.py`.
"""
from __future__ import annotations

import ctypes.util
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from resnet_jax import errors

ENV = "RESNET_JAX_ALLOCATOR"
ACTIVE_ENV = "RESNET_JAX_ALLOCATOR_ACTIVE"  # set in the re-executed process
CHOICES = ("auto", "jemalloc", "tcmalloc", "system")
# jemalloc returns freed pages to the kernel after 10 s by default; never purging is
# what removes the page faults (default jemalloc measured no faster than glibc).
JEMALLOC_CONF = "retain:true,dirty_decay_ms:-1,muzzy_decay_ms:-1"
LIBRARIES = {
    "jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so",
                 "libtcmalloc.so"),
}
SEARCH_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
               "/usr/local/lib", "/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu")
APT_PACKAGE = "libjemalloc2"
# experiments/README.md, "CPU speed": 195-235 img/s with glibc, 267-309 with jemalloc (ResNet-20).
# How long a run takes is said once, measured on the machine at hand (`cpu_notice`), never here.
SLOWER = "CPU training runs ~25-40 % slower without it"
INSTALL_HINT = ("allocator: system malloc; CPU training is ~25-40% faster with jemalloc "
                f"(apt install {APT_PACKAGE})")
# Distributions that give JAX a non-CPU backend.
ACCELERATOR_PACKAGES = re.compile(r"^(jax[-_]cuda\d*[-_]plugin|jax[-_]cuda\d*[-_]pjrt|jax[-_]rocm\d*"
                                  r"[-_]plugin|jax[-_]rocm\d*[-_]pjrt|libtpu(-nightly)?|jax[-_]tpu)$",
                                  re.IGNORECASE)


class AllocatorError(errors.InputError):
  """RESNET_JAX_ALLOCATOR asks for something that cannot be done."""


def find_library(kind: str, search_dirs: Sequence[str] = SEARCH_DIRS) -> Optional[str]:
  """Path (or soname) of the `kind` ("jemalloc" | "tcmalloc") shared library, or None."""
  for name in LIBRARIES[kind]:
    for d in search_dirs:
      path = os.path.join(d, name)
      if os.path.isfile(path):
        return path
  # Elsewhere on the loader's path (e.g. a conda env): a soname, which LD_PRELOAD resolves.
  return ctypes.util.find_library("jemalloc" if kind == "jemalloc" else "tcmalloc_minimal")


def accelerator_packages() -> List[str]:
  """Installed distributions that provide a GPU/TPU backend for JAX."""
  names = []
  for dist in importlib.metadata.distributions():
    name = dist.metadata.get("Name") or ""
    if ACCELERATOR_PACKAGES.match(name):
      names.append(name)
  return sorted(set(names))


def cpu_only(environ: Mapping[str, str], accelerators: Sequence[str]) -> bool:
  """Whether JAX will run on the CPU: JAX_PLATFORMS says so, or no accelerator is installed."""
  platforms = [p.strip().lower() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
  if platforms:
    return platforms == ["cpu"]
  return not accelerators


def _preloaded(environ: Mapping[str, str]) -> Optional[str]:
  for entry in re.split(r"[:\s]+", environ.get("LD_PRELOAD", "")):
    if "jemalloc" in entry or "tcmalloc" in entry:
      return entry
  return None


def preload_environment(kind: str, library: str, environ: Mapping[str, str]) -> Dict[str, str]:
  """The variables to add to `environ` so a new process runs with `library` (`kind`)."""
  preload = environ.get("LD_PRELOAD", "")
  env = {"LD_PRELOAD": f"{library}:{preload}" if preload else library, ACTIVE_ENV: kind}
  if kind == "jemalloc":
    conf = environ.get("MALLOC_CONF", "")
    env["MALLOC_CONF"] = f"{JEMALLOC_CONF},{conf}" if conf else JEMALLOC_CONF
  return env


def plan(environ: Mapping[str, str], platform: str = sys.platform,
         accelerators: Optional[Sequence[str]] = None,
         finder=find_library) -> Tuple[Optional[Dict[str, str]], str]:
  """What to do: `(environment to re-execute with, or None; a one-line reason)`."""
  choice = environ.get(ENV, "auto").strip().lower() or "auto"
  if choice not in CHOICES:
    raise AllocatorError(f"{ENV}={environ.get(ENV)!r} is not one of {', '.join(CHOICES)}")
  if environ.get(ACTIVE_ENV):
    return None, f"allocator: {environ[ACTIVE_ENV]} (LD_PRELOAD)"
  if choice == "system":
    return None, f"allocator: system malloc ({ENV}=system)"
  if not platform.startswith("linux"):
    if choice != "auto":
      raise AllocatorError(f"{ENV}={choice}: preloading an allocator is supported on Linux only")
    return None, "allocator: system malloc (not Linux)"
  already = _preloaded(environ)
  if already:
    return None, f"allocator: {already} (LD_PRELOAD already set)"
  if choice == "auto":
    accelerators = accelerator_packages() if accelerators is None else accelerators
    if not cpu_only(environ, accelerators):
      return None, "allocator: system malloc (an accelerator backend is installed)"
    kinds = ("jemalloc", "tcmalloc")
  else:
    kinds = (choice,)
  for kind in kinds:
    library = finder(kind)
    if library:
      return preload_environment(kind, library, environ), f"allocator: {kind} ({library})"
  if choice != "auto":
    raise AllocatorError(f"{ENV}={choice} but no {LIBRARIES[choice][0]} was found in "
                         f"{', '.join(SEARCH_DIRS)}; install it (Debian/Ubuntu: apt install "
                         f"{'libjemalloc2' if choice == 'jemalloc' else 'libtcmalloc-minimal4'}) or "
                         f"set {ENV}=system")
  return None, INSTALL_HINT


def reexec_if_useful(argv: Sequence[str]) -> Optional[str]:
  """Re-executes `python -m resnet_jax.cli ARGV` with a faster allocator when `plan` says so.

  When it does not re-execute, returns the line worth printing: the allocator this
  (re-executed) process runs with, or how to install one where it would help; None when
  nothing changed and nothing would help (an accelerator, an allocator chosen or preloaded
  by the user, not Linux).
  """
  env_update, reason = plan(os.environ)
  if env_update is None:
    return reason if os.environ.get(ACTIVE_ENV) or reason == INSTALL_HINT else None
  env = {**os.environ, **env_update}
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, "-m", "resnet_jax.cli", *argv], env)
  return reason  # not reached


def python_note(environ: Mapping[str, str] = os.environ) -> Optional[str]:
  """For a Python program that trains (`rj.compare`, the experiment scripts), which cannot preload
  an allocator once it runs: the line that says how to start it with one, where that would help
  (or how to install one); None where nothing would (`plan`'s reasons)."""
  env_update, reason = plan(environ)
  if env_update is None:
    return reason if reason == INSTALL_HINT else None
  preload = " ".join(f"{k}={v}" for k, v in env_update.items() if k != ACTIVE_ENV)
  return (f"allocator: this Python runs with the system's malloc, and CPU training is ~25-40 % faster with "
          f"{env_update[ACTIVE_ENV]}: start it as `{preload} python ...` (resnet-jax train does this itself)")


def setup_steps(environ: Mapping[str, str], platform: str = sys.platform,
                accelerators: Optional[Sequence[str]] = None, finder=find_library,
                which: Callable[[str], Optional[str]] = shutil.which,
                is_root: Optional[bool] = None) -> Tuple[List[str], str]:
  """How `make train` gets a fast allocator: `(the install command, or []; the line to print)`.

  Nothing to do (empty line) off Linux, with an accelerator, or when jemalloc/tcmalloc is
  installed. Else: apt-get as root or through password-less `sudo -n`; without either,
  the slowdown and the one command to run.
  """
  accelerators = accelerator_packages() if accelerators is None else accelerators
  if (not platform.startswith("linux") or not cpu_only(environ, accelerators)
      or any(finder(kind) for kind in LIBRARIES)):
    return [], ""
  if which("apt-get") is None:
    return [], f"jemalloc is not installed: {SLOWER}; install jemalloc with the system's package manager"
  is_root = (os.geteuid() == 0) if is_root is None else is_root
  if not is_root and which("sudo") is None:
    return [], f"jemalloc is not installed: {SLOWER}; as root run: apt-get install {APT_PACKAGE}"
  command = ([] if is_root else ["sudo", "-n"]) + ["apt-get", "install", "-y", "-q", APT_PACKAGE]
  return command, f"installing {APT_PACKAGE} (jemalloc): {SLOWER}"


def setup(run=subprocess.run, print_fn=print, **facts) -> bool:
  """Installs jemalloc where `setup_steps` can (an `apt-get update` first if the package is
  unknown); prints what it does or, failing, the slowdown and the command. True if installed."""
  command, line = setup_steps(os.environ, **facts)
  if line:
    print_fn(line, flush=True)
  if not command:
    return False
  quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
  update = command[:command.index("apt-get")] + ["apt-get", "update", "-q"]
  if run(command, **quiet).returncode != 0 and (run(update, **quiet).returncode != 0
                                                 or run(command, **quiet).returncode != 0):
    sudo = "sudo " if command[0] == "sudo" else ""
    print_fn(f"could not install {APT_PACKAGE}: {SLOWER}; to fix it run: {sudo}apt-get install {APT_PACKAGE}",
             flush=True)
    return False
  print_fn(f"installed {APT_PACKAGE}: resnet-jax train preloads it", flush=True)
  return True


if __name__ == "__main__":
  setup()
