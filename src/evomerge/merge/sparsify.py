"""Sparsification with the expensive part done once per run.

mergekit's TIES keeps ``argsort(|delta|, descending)[:k]`` of each task vector, which
costs a full sort per tensor per candidate (7.5 s for one 4096x4096 tensor on 2
cores). A task vector does not change during a search, so we sort it once. The same
sort on the same input makes the mask identical to mergekit's, ties included
(``mergekit/sparsify.py``). A density is a range ``[lo, hi)`` of positions in that order
(``key_range``), and a mask is one of:

- rank keys (the eager kernels): each entry's position in the order, int32, kept when
  ``lo <= rank < hi``;
- a magnitude cut (the fused CPU kernel, which then reads no key at all):
  ``lo < |delta| < hi`` for float bounds read off the order, plus the few entries whose
  magnitude equals a bound and whose rank is inside the range (``magnitude_cut``).

The kinds of order:

- magnitude (TIES): key = rank by decreasing magnitude, kept ``[0, k)``;
- magnitude_outliers (breadcrumbs): key = rank by increasing magnitude (mergekit uses
  ``torch.sort`` there, whose order of equal values differs from ``argsort``), kept
  ``[n_bottom, n_bottom + k)``;
- random (DARE): key = a uniform 15-bit level (int16, non-negative) drawn from a
  generator seeded by (seed, tensor name, model), kept below ``density * 2**15``: a
  Bernoulli mask whose probability is the density rounded down to a multiple of 2**-15
  (an error under 3.1e-5), the same every time the same recipe is merged. Small keys
  halve the memory of int32 ones, and let the L1 norm that DARE's rescale needs be read,
  for any density, from a once-per-run histogram of ``|delta|`` over the levels
  (``level_l1``);
- della_magprune: per-row magnitude rank fractions plus random keys (``della_mask``).

Approximate mode (``Merger(exact=False)``) skips the sort for magnitude masks: a
histogram of ``|delta|`` over its top 17 float bits (buckets 0.2% wide in value) turns a
density into a threshold, ``|delta| >= t``, that a candidate compares without reading
keys. The kept count is read from the histogram, and a threshold that would miss the
density by more than 0.1% of the entries is not used (``threshold_range`` returns None;
the engine then falls back to the exact mask).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
from numba import njit

LEVELS = 2**15  # random keys are int16 levels, uniform in [0, LEVELS)
#: Bounds that keep every key of any kind. Keys are never negative: the fused kernel
#: runs at half speed on negative keys.
KEEP_ALL = (0, 2**31 - 1)


def _magnitudes(delta: torch.Tensor) -> torch.Tensor:
    w = delta.abs().reshape(-1)
    return w.float() if w.device.type == "cpu" else w  # as mergekit does


def _rank_of(order: torch.Tensor) -> torch.Tensor:
    rank = torch.empty(order.numel(), dtype=torch.int32, device=order.device)
    rank[order] = torch.arange(order.numel(), dtype=torch.int32, device=order.device)
    return rank


def magnitude_order(delta: torch.Tensor, method: str) -> torch.Tensor:
    """Entry indices in mergekit's order for ``method``: by decreasing magnitude (``magnitude``,
    an argsort) or increasing (``magnitude_outliers``, a sort, whose order of equal values differs)."""
    w = _magnitudes(delta)
    order = torch.argsort(w, descending=True) if method == "magnitude" else torch.sort(w, descending=False).indices
    return order.to(torch.int32) if order.numel() < 2**31 else order


def ranks(order: torch.Tensor) -> torch.Tensor:
    """Each entry's position in ``order``."""
    return _rank_of(order)


@njit(cache=True)
def _equal_run(delta: np.ndarray, order: np.ndarray, r: int) -> tuple[int, int]:  # pragma: no cover - compiled
    """The positions ``[a, b)`` in ``order`` whose magnitude equals position ``r``'s (a sorted
    order keeps equal values together): two binary searches, compiled, since a candidate
    runs four per tensor and endpoint."""
    value = abs(delta[order[r]])
    lo, hi = 0, r
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if abs(delta[order[mid]]) == value else (mid + 1, hi)
    a, lo, hi = lo, r + 1, order.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if abs(delta[order[mid]]) == value else (lo, mid)
    return a, lo


_NO_ENTRIES = np.empty(0, np.int64)


def _end(delta: np.ndarray, order: np.ndarray, r: int, lo: int, hi: int, toward: float) -> tuple[float, np.ndarray]:
    """The bound at the kept magnitude of position ``r``: just past it when every entry of that
    magnitude is kept, else at it (excluding it), with the kept entries of it."""
    value = abs(delta[order[r]])
    a, b = _equal_run(delta, order, r)
    if a >= lo and b <= hi:
        return float(np.nextafter(value, np.float32(toward))), _NO_ENTRIES
    return float(value), order[max(a, lo) : min(b, hi)].astype(np.int64) if value != 0 else _NO_ENTRIES


def magnitude_cut(delta: np.ndarray, order: np.ndarray, lo: int, hi: int) -> tuple[float, float, np.ndarray]:
    """Positions ``[lo, hi)`` of ``order`` (a magnitude order of ``delta``, float32) as a mask
    ``low < |delta| < high`` plus extra entries, in O(log n) reads.

    Entries strictly between the smallest and the largest kept magnitude are all kept. The
    entries at those two magnitudes are kept whole when all of them are in the range;
    otherwise the bound excludes the magnitude and its entries inside the range are
    returned (ties at the cut: rare in fp32 task vectors, a handful per value in bf16
    ones). Zeros are never returned: a zero entry adds nothing to any merge.
    """
    if hi <= lo:
        return math.inf, math.inf, _NO_ENTRIES
    smallest, largest = sorted((lo, hi - 1), key=lambda r: abs(delta[order[r]]))
    low, extra_low = _end(delta, order, smallest, lo, hi, -math.inf)
    high, extra_high = _end(delta, order, largest, lo, hi, math.inf)
    if abs(delta[order[smallest]]) == abs(delta[order[largest]]):  # one magnitude: the same entries
        extra_high = _NO_ENTRIES
    return low, high, np.concatenate([extra_low, extra_high])


def random_keys(numel: int, seed: int, tensor: str, model: int, device: torch.device | str) -> torch.Tensor:
    """Uniform int16 keys for a Bernoulli mask, reproducible from (seed, tensor name, model index)."""
    digest = hashlib.blake2b(f"{seed}\0{tensor}\0{model}".encode(), digest_size=8).digest()
    generator = torch.Generator(device=device).manual_seed(int.from_bytes(digest, "little") >> 1)
    return torch.randint(0, LEVELS, (numel,), generator=generator, dtype=torch.int16, device=device)


def level_l1(delta: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``out[v] = sum(|delta| where level < v + 1)``: the L1 norm a random mask keeps, for every level."""
    levels = keys.to(torch.int64)
    hist = torch.zeros(LEVELS, dtype=torch.float64, device=delta.device)
    hist.index_add_(0, levels, delta.abs().to(torch.float64))
    return hist.cumsum(0)


def row_rank_fraction(delta: torch.Tensor) -> torch.Tensor:
    """DELLA's ``rank_norm``: each entry's magnitude rank within its row, scaled to [0, 1]."""
    rows = delta if delta.dim() >= 2 else delta.unsqueeze(0)
    ranks = torch.argsort(rows.abs(), dim=1, descending=False).argsort(dim=1).float() + 1
    low, high = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
    return ((ranks - low) / (high - low)).clamp(0, 1).reshape(-1)


def key_range(method: str, density: float, numel: int, gamma: float = 0.0) -> tuple[int, int]:
    """The positions ``[lo, hi)`` in the order (or levels) that mergekit's ``sparsify(method, density)`` keeps."""
    if density >= 1:
        return KEEP_ALL
    if density <= 0 or numel == 0:
        return 0, 0
    if method == "magnitude":
        return 0, max(1, int(density * numel))
    if method == "magnitude_outliers":
        target = int(density * numel)
        bottom = max(0, numel - target - int(gamma * numel))
        return bottom, bottom + target
    if method == "random":
        return 0, int(density * LEVELS)
    raise ValueError(f"no key range for sparsification {method!r}")


THRESHOLD_METHODS = frozenset({"magnitude", "magnitude_outliers"})
_SHIFT = 14  # float32 bits >> 14: sign (0), 8 exponent, 9 mantissa bits
BUCKETS = 2 ** (31 - _SHIFT)
#: The approximate mode's bound on the kept fraction's error.
MAX_DENSITY_ERROR = 1e-3


def magnitude_table(delta: torch.Tensor) -> torch.Tensor:
    """``[count, L1]`` of the entries at or above each bucket's lower edge, ``(2, BUCKETS + 1)``."""
    magnitude = delta.abs().reshape(-1).float()
    buckets = (magnitude.view(torch.int32) >> _SHIFT).long()
    counts = torch.bincount(buckets, minlength=BUCKETS).double()
    l1 = torch.bincount(buckets, weights=magnitude.double(), minlength=BUCKETS)
    suffix = torch.stack([counts, l1]).flip(1).cumsum(1).flip(1)
    return torch.cat([suffix, suffix.new_zeros(2, 1)], dim=1).cpu()


def _edge(bucket: int) -> float:
    if bucket >= BUCKETS:
        return float("inf")
    return float(torch.tensor(bucket << _SHIFT, dtype=torch.int32).view(torch.float32))


def _closest(count_ge: torch.Tensor, k: int) -> int:
    """The bucket whose ``count >= edge`` is nearest ``k`` (counts fall as buckets rise)."""
    first_below = int(torch.searchsorted(-count_ge, torch.tensor([-float(k)], dtype=count_ge.dtype), right=True))
    candidates = [b for b in (first_below - 1, first_below) if 0 <= b < count_ge.numel()]
    return min(candidates, key=lambda b: abs(float(count_ge[b]) - k))


def threshold_range(
    table: torch.Tensor, method: str, density: float, numel: int, gamma: float = 0.0
) -> tuple[float, float, float] | None:
    """``(lo, hi, kept L1)`` with ``lo <= |delta| < hi`` keeping about what ``key_range`` keeps,
    or None if that misses by more than ``MAX_DENSITY_ERROR * numel`` entries."""
    count_ge, l1_ge = table[0], table[1]
    if method == "magnitude":
        target = max(1, int(density * numel))
        low, high = _closest(count_ge, target), BUCKETS
    elif method == "magnitude_outliers":
        target = int(density * numel)
        bottom = max(0, numel - target - int(gamma * numel))
        low, high = _closest(count_ge, numel - bottom), _closest(count_ge, numel - bottom - target)
    else:
        raise ValueError(f"no threshold for sparsification {method!r}")
    kept = float(count_ge[low] - count_ge[high])
    if abs(kept - target) > MAX_DENSITY_ERROR * numel:
        return None
    return _edge(low), _edge(high), float(l1_ge[low] - l1_ge[high])


def della_mask(fraction: torch.Tensor, keys: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """DELLA's MagPrune: keep with probability ``density - eps + 2 eps * rank_fraction``."""
    probability = (density - epsilon) + fraction * (2 * epsilon)
    return keys < probability * LEVELS
