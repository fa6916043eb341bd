"""Paired comparisons of two variants over seeds: is a difference real?

Runs of two variants with the same seed see the same data order and augmentation (the seed
draws both), so their errors are paired: the seed-to-seed noise they share cancels in the
difference. For the differences d_i = error(variant, seed i) − error(baseline, seed i):

* the mean difference and its 95 % confidence interval, mean ± t(0.975, n−1) · s / √n
  (Student's t: few seeds, unknown spread);
* resolved: the interval excludes 0 (the paired t-test rejects "no difference" at 5 %);
* the seeds a study would need to resolve a difference of the observed size at the observed
  spread with 80 % power (the paired t-test's power, from the noncentral t distribution),
  what a reader asks of an unresolved difference: noise, or too few seeds?

scipy.stats does the distributions; nothing here is estimated by simulation.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Optional, Tuple

import numpy as np
from scipy import stats as scipy_stats

from resnet_jax import errors

CONFIDENCE = 0.95
POWER = 0.8
MAX_SEEDS = 100_000


@dataclasses.dataclass(frozen=True)
class PairedDifference:
  """`variant` minus `baseline` over the seeds both finished (errors in percent)."""
  variant: str
  baseline: str
  seeds: Tuple[int, ...]
  differences: Tuple[float, ...]
  mean: float
  std: float                     # sample standard deviation of the differences (nan for one seed)
  low: float                     # the confidence interval (nan below two seeds)
  high: float
  confidence: float
  seeds_for_power: Optional[int]  # to resolve |mean| at spread `std` with `POWER`; None when not defined

  @property
  def resolved(self) -> bool:
    """Whether the confidence interval excludes 0 (False when it is not defined)."""
    return bool(self.low > 0 or self.high < 0)

  def text(self) -> str:
    """`+0.42 [−0.10, +0.94]`, the mean difference and its interval, in percentage points."""
    if math.isnan(self.low):
      return f"{self.mean:+.2f} (one seed: no interval)"
    return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


def seeds_for_power(difference: float, std: float, alpha: float = 1 - CONFIDENCE, power: float = POWER,
                    max_seeds: int = MAX_SEEDS) -> Optional[int]:
  """The fewest seeds n with which a two-sided paired t-test at level `alpha` detects a mean
  difference `difference` with spread `std` with probability `power`.

  The test statistic is noncentral t with n − 1 degrees of freedom and noncentrality
  |difference|·√n / std. None when the difference is 0 or the spread not known (nan) or
  more than `max_seeds` would be needed; 2 when the spread is 0 (any two seeds resolve it).
  """
  if not (math.isfinite(difference) and math.isfinite(std)) or difference == 0:
    return None
  if std == 0:
    return 2
  effect = abs(difference) / std
  for n in range(2, max_seeds + 1):
    df = n - 1
    critical = scipy_stats.t.ppf(1 - alpha / 2, df)
    noncentrality = effect * math.sqrt(n)
    achieved = scipy_stats.nct.sf(critical, df, noncentrality) + scipy_stats.nct.cdf(-critical, df, noncentrality)
    if achieved >= power:
      return n
  return None


def paired_difference(baseline: Mapping[int, float], variant: Mapping[int, float], variant_name: str = "variant",
                      baseline_name: str = "baseline", confidence: float = CONFIDENCE) -> PairedDifference:
  """The paired difference of two variants' final errors by seed (module docstring).

  `baseline` and `variant` map seed -> error; only seeds in both count. Raises `ValueError`
  when they share none.
  """
  seeds = tuple(sorted(set(baseline) & set(variant)))
  if not seeds:
    raise errors.InputError(f"{variant_name} and {baseline_name} have no finished seed in common")
  d = np.asarray([variant[s] - baseline[s] for s in seeds], np.float64)
  mean = float(d.mean())
  if len(d) < 2:
    return PairedDifference(variant_name, baseline_name, seeds, tuple(d.tolist()), mean, float("nan"),
                            float("nan"), float("nan"), confidence, None)
  std = float(d.std(ddof=1))
  half = float(scipy_stats.t.ppf(0.5 + confidence / 2, len(d) - 1) * std / math.sqrt(len(d)))
  return PairedDifference(variant_name, baseline_name, seeds, tuple(d.tolist()), mean, std, mean - half,
                          mean + half, confidence, seeds_for_power(mean, std, 1 - confidence))
