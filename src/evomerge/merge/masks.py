"""Sparsification masks, found per candidate without keeping a per-entry order.

mergekit's TIES keeps ``argsort(|delta|, descending)[:k]`` of each task vector, a full
sort per tensor per candidate. Keeping each task vector's order for the whole run
makes any density a lookup, but costs 4 bytes per parameter and endpoint: 84 GB for a
7B base and three fine-tunes. Here a mask is a *cut* instead: the magnitude and the
index of the last entry kept, ``(v, i)``; an entry is kept when its magnitude is past
``v``, or equal to it with an index on the kept side of ``i``. The cut for any density
is found in two scans of the task vector (``select``), from a once-per-run histogram
of the top 16 bits of every magnitude (``fused.magnitude_histogram``; 256 KB per
tensor and endpoint):

1. the histogram gives the 16-bit bucket holding the wanted rank;
2. a scan histograms the low 16 bits of that bucket's entries: the exact magnitude;
3. a scan finds the entry of that magnitude at the wanted rank, counting by index
   (stopping there).

The two scans serve every endpoint (and both ends of a breadcrumbs cut) at once.

So a mask keeps exactly ``k`` entries, the ``k`` of largest magnitude as in mergekit.
Among entries of equal magnitude at the cut, the lower index is kept first. mergekit
inherits the order of equal magnitudes from torch's unstable sort, which is
unspecified (and differs between CPU and GPU); results differ from mergekit's only at
such ties, and only by which of the equal-magnitude entries are kept.

The kinds of mask (mergekit's ``sparsify.py``):

- magnitude (TIES): the ``k = max(1, int(density * n))`` largest magnitudes;
- magnitude_outliers (breadcrumbs): ranks ``[bottom, bottom + k)`` by increasing
  magnitude, ``bottom = n - k - int(gamma * n)``;
- random (DARE): entry ``j`` kept when its 15-bit level, a hash of ``(seed, j)``, is below
  ``density * 2**15``: a Bernoulli mask whose probability is the density rounded down
  to a multiple of 2**-15 (an error under 3.1e-5), the same every time the same recipe
  is merged, with nothing stored per entry. The L1 norm DARE's rescale needs comes from
  a once-per-run table of ``|delta|`` summed per level;
- della_magprune (DELLA): per-row magnitude rank fractions and random levels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from . import fused

LEVELS = 2**15  # random levels are uniform in [0, LEVELS)
BUCKETS = 2**15  # magnitude histogram buckets: the top 16 bits of a non-negative fp32
_M32 = 0xFFFFFFFF
_K0, _K1, _K2 = 0x9E3779B1, 0x85EBCA6B, 0xC2B2AE35

#: CPU tensors are scanned by the compiled kernels (``fused.py``); the torch versions serve
#: other devices (tests switch this off to run those on the CPU).
COMPILED_SCANS = True

#: ``sweep()`` yields ``(offset, fp32 chunks of every task vector)``, in index order
Sweep = Callable[[], Iterator[tuple[int, list[torch.Tensor]]]]


@dataclass
class Cuts:
    """A candidate's magnitude masks for the task vectors of one tensor: entry ``j`` of
    vector ``i`` is kept when ``lo[i] < |d| < hi[i]``, or ``|d| == lo[i]`` and
    ``ties[i, 0] <= j <= ties[i, 1]``, or ``|d| == hi[i]`` and ``ties[i, 2] <= j <= ties[i, 3]``;
    with ``seeds``, when the random level of ``j`` is below ``hi[i]`` instead."""

    lo: np.ndarray  # float32
    hi: np.ndarray  # float32
    ties: np.ndarray  # int64, (n, 4)
    seeds: np.ndarray | None = None  # uint64: random masks

    @classmethod
    def keep_all(cls, n: int) -> Cuts:
        _, lo, hi, ties = fused.keep_all(n)
        return cls(lo, hi, ties)

    @classmethod
    def random(cls, seeds: list[int], densities: list[float]) -> Cuts:
        hi = np.array([float(LEVELS) if d >= 1 else float(int(d * LEVELS)) for d in densities], np.float32)
        return cls(
            np.zeros(len(seeds), np.float32), hi, np.zeros((len(seeds), 4), np.int64), np.array(seeds, np.uint64)
        )

    def arrays(self) -> fused.MaskArrays:
        return self.seeds, self.lo, self.hi, self.ties

    def mask(self, i: int, delta: torch.Tensor, offset: int) -> torch.Tensor:
        """The eager kernels' boolean mask of vector ``i`` over a chunk starting at ``offset``."""
        j = torch.arange(offset, offset + delta.numel(), device=delta.device)
        if self.seeds is not None:
            return random_levels(j, int(self.seeds[i])) < int(self.hi[i])
        m = delta.abs()
        lo, hi, (a, b, c, d) = float(self.lo[i]), float(self.hi[i]), self.ties[i].tolist()
        return ((m > lo) | ((m == lo) & (j >= a) & (j <= b))) & ((m < hi) | ((m == hi) & (j >= c) & (j <= d)))


def _compiled(t: torch.Tensor) -> bool:
    return COMPILED_SCANS and t.device.type == "cpu"


def magnitude_histogram(delta: torch.Tensor, counts: np.ndarray) -> None:
    """Add one chunk to a task vector's histogram of magnitude buckets."""
    if _compiled(delta):
        fused.magnitude_histogram(delta.numpy(), counts)
    else:
        bits = (delta.view(torch.int32) & 0x7FFFFFFF) >> 16
        counts += torch.bincount(bits, minlength=BUCKETS).cpu().numpy()


def _bucket_histogram(delta: torch.Tensor, bucket: int, counts: np.ndarray) -> None:
    if _compiled(delta):
        fused.bucket_histogram(delta.numpy(), bucket, counts)
    else:
        bits = delta.view(torch.int32) & 0x7FFFFFFF
        counts += torch.bincount(bits[(bits >> 16) == bucket] & 0xFFFF, minlength=1 << 16).cpu().numpy()


def _find_equal(delta: torch.Tensor, value_bits: int, nth: int) -> tuple[int, int]:
    if _compiled(delta):
        return fused.find_equal(delta.numpy(), np.uint32(value_bits), nth)
    at = torch.nonzero((delta.view(torch.int32) & 0x7FFFFFFF) == value_bits).view(-1)
    return (int(at[nth]), nth) if nth < at.numel() else (-1, at.numel())


def _pick(counts: np.ndarray, rank: int, descending: bool) -> tuple[int, int]:
    """(bucket holding ``rank``, entries in the buckets before it) walking up or down."""
    walk = counts[::-1] if descending else counts
    total = np.cumsum(walk)
    k = int(np.searchsorted(total, rank, side="right"))
    return (len(counts) - 1 - k if descending else k), (int(total[k - 1]) if k else 0)


def select(histograms: list[np.ndarray], wanted: list[tuple[int, int, bool]], sweep: Sweep) -> list[tuple[float, int]]:
    """``(magnitude, index)`` of the entry at each wanted ``(vector, rank, descending)``, entries
    ordered by magnitude (decreasing or increasing), equal magnitudes by index. Two sweeps
    over the task vectors serve every request, whatever their number."""
    buckets = [_pick(histograms[v], rank, down) for v, rank, down in wanted]
    low = [np.zeros(1 << 16, np.int64) for _ in wanted]
    for _, deltas in sweep():
        for (v, _, _), (bucket, _), counts in zip(wanted, buckets, low, strict=True):
            _bucket_histogram(deltas[v], bucket, counts)
    targets, nth = [], []
    for (_, rank, down), (bucket, before), counts in zip(wanted, buckets, low, strict=True):
        bits, inside = _pick(counts, rank - before, down)
        targets.append((bucket << 16) | bits)
        nth.append(rank - before - inside)
    found: list[tuple[float, int] | None] = [None] * len(wanted)
    for offset, deltas in sweep():
        for k, (v, _, _) in enumerate(wanted):
            if found[k] is None:
                at, seen = _find_equal(deltas[v], targets[k], nth[k])
                if at >= 0:
                    found[k] = (float(np.array([targets[k]], np.uint32).view(np.float32)[0]), offset + at)
                else:
                    nth[k] -= seen
        if all(f is not None for f in found):
            break
    if any(f is None for f in found):  # pragma: no cover
        raise AssertionError("the histogram and the scans disagree")
    return found  # type: ignore[return-value]


def magnitude_cuts(
    kind: str,
    densities: list[float],
    gammas: list[float],
    numel: int,
    histograms: list[np.ndarray],
    sweep: Sweep,
) -> Cuts:
    """The cuts of what mergekit's ``sparsify(kind, density)`` keeps of each task vector
    (``histograms[i]`` and ``sweep``'s ``deltas[i]`` are vector ``i``'s)."""
    cuts = Cuts.keep_all(len(densities))
    wanted: list[tuple[int, int, bool]] = []
    for i, (density, gamma) in enumerate(zip(densities, gammas, strict=True)):
        if density >= 1:
            continue
        if kind == "magnitude":
            wanted.append((i, max(1, int(density * numel)) - 1, True))
        elif kind == "magnitude_outliers":
            target = int(density * numel)
            if target == 0:
                cuts.lo[i] = cuts.hi[i] = np.inf
                continue
            bottom = max(0, numel - target - int(gamma * numel))
            wanted += [(i, bottom, False), (i, bottom + target - 1, False)]
        else:
            raise ValueError(f"no magnitude cut for sparsification {kind!r}")
    positions = iter(select(histograms, wanted, sweep) if wanted else [])
    for i, (density, _) in enumerate(zip(densities, gammas, strict=True)):
        if density >= 1 or cuts.lo[i] == np.inf:
            continue
        v, at = next(positions)
        if kind == "magnitude":  # the first k by decreasing magnitude
            cuts.lo[i], cuts.ties[i] = v, (0, at, 0, -1)
        else:  # ranks [bottom, bottom + k) by increasing magnitude
            v2, at2 = next(positions)
            cuts.lo[i], cuts.hi[i], cuts.ties[i] = v, v2, (at, numel, 0, at2)
    return cuts


def seed_of(seed: int, tensor: str, model: int) -> int:
    """The 32-bit hash seed of one task vector's random levels: (recipe seed, tensor, model)."""
    digest = hashlib.blake2b(f"{seed}\0{tensor}\0{model}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def _mul32(h: torch.Tensor, c: int) -> torch.Tensor:
    """``h * c mod 2**32`` in int64 without overflow (16-bit halves of ``c``)."""
    return (h * (c & 0xFFFF) + (((h * (c >> 16)) & 0xFFFF) << 16)) & _M32


def random_levels(j: torch.Tensor, seed: int) -> torch.Tensor:
    """The random levels of entries ``j`` (int64): ``fused.level`` in torch, for any device."""
    h = (_mul32(j & _M32, _K0) + seed) & _M32
    h ^= h >> 16
    h = _mul32(h, _K1)
    h ^= h >> 13
    h = _mul32(h, _K2)
    h ^= h >> 16
    return h >> 17


def level_l1(table: np.ndarray, delta: torch.Tensor, seed: int, offset: int) -> None:
    """Add one chunk to ``table[v] = sum |delta|`` over the entries of level ``v``."""
    if _compiled(delta):
        fused.level_l1(delta.numpy(), np.uint64(seed), offset, table)
    else:
        j = torch.arange(offset, offset + delta.numel(), device=delta.device)
        levels = random_levels(j, seed)
        add = torch.zeros(LEVELS, dtype=torch.float64, device=delta.device)
        add.index_add_(0, levels, delta.abs().double())
        table += add.cpu().numpy()


def cut_l1(cuts: Cuts, i: int, delta: torch.Tensor, offset: int) -> float:
    """``sum |delta|`` over what magnitude cut ``i`` keeps in one chunk."""
    if _compiled(delta):
        return float(fused.cut_l1(delta.numpy(), cuts.lo[i], cuts.hi[i], cuts.ties[i], offset))
    return float((delta.abs() * cuts.mask(i, delta, offset)).sum(dtype=torch.float64))


def row_rank_fraction(delta: torch.Tensor) -> torch.Tensor:
    """DELLA's ``rank_norm``: each entry's magnitude rank within its row, scaled to [0, 1]."""
    rows = delta if delta.dim() >= 2 else delta.unsqueeze(0)
    ranks = torch.argsort(rows.abs(), dim=1, descending=False).argsort(dim=1).float() + 1
    low, high = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
    return ((ranks - low) / (high - low)).clamp(0, 1).reshape(-1)


def della_mask(fraction: torch.Tensor, levels: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """DELLA's MagPrune: keep with probability ``density - eps + 2 eps * rank_fraction``."""
    probability = (density - epsilon) + fraction * (2 * epsilon)
    return levels < probability * LEVELS
