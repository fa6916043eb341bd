"""What a checkpoint must match, and the checksums that prove what it holds.

* `fingerprint`: the model (config.model, classes, input shape) and the shapes of the
  parameters, BatchNorm statistics and optimiser state; checked before a restore, so that a
  mismatch is reported by name (`describe_mismatch`) instead of as a shape trace.
* `tree_digests`: SHA-256 of every array (`array_digest`: dtype, shape and bytes), computed
  from the values at save time and compared with the values read back; the checkpoint's
  "meta" item is itself sealed by the digest of its content (`sealed`).
"""
from __future__ import annotations

import hashlib
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np

from resnet_jax.storage import files

VARIABLE_KEYS = ("params", "batch_stats")
STATE_KEYS = ("params", "batch_stats", "opt_state")
# Keys of "meta" (besides the fingerprint): the run's config, the checksums of the other
# items, and the checksum of "meta" itself.
CONFIG_KEY = "config"
CHECKSUMS_KEY = "checksums"
SEAL_KEY = "meta_sha256"


def _leaf_name(path: Tuple[Any, ...]) -> str:
  """"train/params/stem_conv/kernel": the same for a `TrainState` field and a dict key."""
  parts = []
  for key in path:
    for attribute in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey
      if hasattr(key, attribute):
        parts.append(str(getattr(key, attribute)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def array_digest(array: np.ndarray) -> str:
  """SHA-256 of an array's dtype, shape and bytes."""
  array = np.asarray(array)
  digest = hashlib.sha256(f"{array.dtype.str}{tuple(array.shape)}".encode())
  digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
  return digest.hexdigest()


def _local_copies(leaves: List[Any]) -> List[Optional[np.ndarray]]:
  """Host copies of the leaves this process holds whole (a replicated array's local replica);
  None for an array sharded over processes."""
  fetch = [x for x in leaves if not isinstance(x, jax.Array) or x.is_fully_addressable]
  fetched = iter(jax.device_get(fetch))
  out = []
  for x in leaves:
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      out.append(np.asarray(next(fetched)))
    elif x.sharding.is_fully_replicated:
      out.append(np.asarray(x.addressable_data(0)))
    else:
      out.append(None)
  return out


def tree_digests(tree: Any) -> Dict[str, str]:
  """Leaf name -> `array_digest`, for every leaf this process holds whole."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  copies = _local_copies([leaf for _, leaf in flat])
  return {_leaf_name(path): array_digest(copy) for (path, _), copy in zip(flat, copies) if copy is not None}


def sealed(meta: Dict[str, Any]) -> Dict[str, Any]:
  return {**meta, SEAL_KEY: files.json_digest(meta)}


def seal_holds(meta: Dict[str, Any]) -> bool:
  """Whether a "meta" item is intact: sealed by its own digest, or from before seals existed."""
  if SEAL_KEY not in meta and CHECKSUMS_KEY not in meta:  # written together: one alone is damage
    return True
  content = {k: v for k, v in meta.items() if k != SEAL_KEY}
  return meta.get(SEAL_KEY) == files.json_digest(content)


def _flat_shapes(tree: Any) -> Dict[str, List[int]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): list(np.shape(leaf)) for path, leaf in flat}


def fingerprint(model_config: Dict[str, Any], num_classes: int, image_shape: Tuple[int, ...],
                abstract_state: Any) -> Dict[str, Any]:
  """What must match for a checkpoint to restore into this run (a `TrainState`, or a
  model's `{"params", "batch_stats"}` when only the variables are restored)."""
  if isinstance(abstract_state, dict):  # {"params", "batch_stats"} of a model, no optimiser
    trees = {k: abstract_state.get(k, {}) for k in VARIABLE_KEYS}
  else:  # a TrainState
    trees = {k: getattr(abstract_state, k) for k in STATE_KEYS}
  return {
      "model": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(model_config.items())},
      "num_classes": int(num_classes),
      "image_shape": [int(d) for d in image_shape],
      **{k: _flat_shapes(v) for k, v in trees.items()},
  }


def describe_mismatch(saved: Dict[str, Any], current: Dict[str, Any],
                      tree_keys: Tuple[str, ...] = STATE_KEYS) -> Optional[str]:
  """How two `fingerprint`s differ, in one line (the first differing part); None if they match.

  Compares the model fields, class count and image shape, then the shapes of each tree in
  ``tree_keys`` (missing, extra and reshaped entries, at most three of each).
  """
  for key in ("model", "num_classes", "image_shape"):
    if saved.get(key) != current[key]:
      if key == "model":
        a, b = saved.get(key, {}), current[key]
        diffs = [f"model.{k}: checkpoint {a.get(k)!r} vs config {b.get(k)!r}"
                 for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        return "; ".join(diffs)
      return f"{key}: checkpoint {saved.get(key)!r} vs config {current[key]!r}"
  for key in tree_keys:
    a, b = saved.get(key, {}), current[key]
    if a != b:
      missing = sorted(set(b) - set(a))
      extra = sorted(set(a) - set(b))
      shape = [f"{k}: checkpoint {a[k]} vs config {b[k]}" for k in sorted(set(a) & set(b)) if a[k] != b[k]]
      parts = []
      if shape:
        parts.append(f"{key} shapes differ ({'; '.join(shape[:3])})")
      if missing:
        parts.append(f"{key} not in checkpoint: {', '.join(missing[:3])}")
      if extra:
        parts.append(f"{key} only in checkpoint: {', '.join(extra[:3])}")
      return "; ".join(parts)
  return None
