"""The `resnet-jax` subcommands, one module each, each with `main(argv) -> exit code`.

`resnet_jax.cli` imports a command's module only after deciding whether to re-execute
with a faster allocator, so these modules import JAX and the engine at the top.
"""
from __future__ import annotations

import argparse

from resnet_jax import errors


class UsageError(errors.InputError):
  """A bad command line: the command exits 2 with the message, one line."""


class ArgumentParser(argparse.ArgumentParser):
  """`argparse` whose errors are a `UsageError` (one line, no usage block) instead of an exit."""

  def error(self, message: str):
    if message.endswith("expected one argument"):  # argparse takes a value starting with '-' for a flag
      message += ", or a value that starts with '-' given as --FLAG=VALUE (e.g. --workdir=-run)"
    raise UsageError(f"{message} (see {self.prog} --help)")
