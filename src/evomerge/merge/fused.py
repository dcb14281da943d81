"""Fused CPU kernels for the task-arithmetic family (TIES, DARE, breadcrumbs).

Why hand-written: in eager PyTorch a TIES merge is some twenty full passes over
memory (mask, weight, stack, sign, compare, sum, divide ...), each allocating a
temporary; mergekit's version also sorts. With the sort replaced by once-per-run
keys (``sparsify.py``), what is left is bandwidth-bound, and one pass over the
inputs does it: for each block of entries, mask by key range, weight, elect the
sign and average, then write straight into the live parameter. The arithmetic is
mergekit's, in its order, so results agree with it to the last bit or nearly.

Numba compiles these once per machine (``cache=True`` keeps the machine code next
to this file). On other devices the engine uses the eager PyTorch kernels.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

_BLOCK = 4096  # entries per block: the block's scratch stays in L1/L2
_CHUNKS = 64  # parallel work items, each a run of blocks sharing one scratch allocation


def _key(k):  # type: ignore[no-untyped-def]  # pragma: no cover - replaced by the overload in compiled code
    """What a mask compares: integer keys (ranks, levels) as they are, floats (task vector
    entries, in the approximate mode) by magnitude."""
    return abs(k)


@overload(_key, inline="always")
def _key_by_type(k):  # type: ignore[no-untyped-def]
    # Resolved per key type at compile time: an abs() on integer keys would stop LLVM
    # from vectorising the loop (2x slower), and they are never negative anyway.
    if isinstance(k, types.Float):
        return lambda k: abs(k)
    return lambda k: k


def _gta_merge(base, deltas, keys, lo, hi, scale, weights, consensus, normalize, lam, out):  # pragma: no cover
    """``out = base + lam * combine(mask_i * delta_i * scale_i)``, ``scale_i = rescale_i * weight_i``.

    Entry ``j`` of task vector ``i`` is kept when ``lo[i] <= key(keys[i, j]) < hi[i]``: keys
    are non-negative integer ranks or levels, or the task vectors themselves compared by
    magnitude against thresholds (the approximate mode). ``combine`` is the sign-elected
    mean (TIES) when ``consensus``, else the sum; ``normalize`` divides by the weights that
    took part.

    Each block's weighted, masked deltas are formed once into scratch that stays in cache;
    the loops are branch-free (masks multiply, as mergekit's do), since a random mask would
    otherwise mispredict every other entry. Scratch is allocated once per chunk of blocks.
    """
    n = deltas.shape[0]
    size = base.shape[0]
    zero = np.float32(0.0)
    one = np.float32(1.0)
    blocks = (size + _BLOCK - 1) // _BLOCK
    per_chunk = (blocks + _CHUNKS - 1) // _CHUNKS
    wsum = zero
    for i in range(n):
        wsum += weights[i]
    if abs(wsum) < 1e-8:
        wsum = one
    for c in prange(_CHUNKS):
        v = np.empty((n, _BLOCK), dtype=np.float32)
        total = np.empty(_BLOCK, dtype=np.float32)
        mixed = np.empty(_BLOCK, dtype=np.float32)
        divisor = np.empty(_BLOCK, dtype=np.float32)
        for b in range(c * per_chunk, min(blocks, (c + 1) * per_chunk)):
            start = b * _BLOCK
            m = min(size, start + _BLOCK) - start
            total[:m] = zero
            for i in range(n):
                d, k, low, high, s, vi = deltas[i], keys[i], lo[i], hi[i], scale[i], v[i]
                for j in range(m):
                    a = _key(k[start + j])
                    x = (d[start + j] * np.float32((a >= low) & (a < high))) * s
                    vi[j] = x
                    total[j] += x
            if consensus:
                mixed[:m] = zero
                divisor[:m] = zero
                for i in range(n):
                    w, vi = weights[i], v[i]
                    for j in range(m):
                        x = vi[j]
                        up = total[j] >= zero
                        agree = np.float32(((x > zero) & up) | ((x < zero) & ~up))
                        mixed[j] += x * agree
                        divisor[j] += w * agree
            else:
                mixed[:m] = total[:m]
                divisor[:m] = wsum
            for j in range(m):
                mj = mixed[j]
                if normalize:
                    dv = divisor[j]
                    mj = mj / (dv if dv != zero else one)
                out[start + j] = base[start + j] + mj * lam


def _masked_l1(delta, keys, low, high):  # pragma: no cover
    """``|delta * mask|.sum()`` for the mask ``low <= |keys| < high``, without forming it."""
    size = delta.shape[0]
    blocks = (size + _BLOCK - 1) // _BLOCK
    partial = np.zeros(blocks, dtype=np.float64)
    zero = np.float32(0.0)
    for b in prange(blocks):
        s = zero  # fp32 within a block (4096 entries), fp64 across blocks
        for j in range(b * _BLOCK, min(size, (b + 1) * _BLOCK)):
            a = _key(keys[j])
            s += abs(delta[j]) * np.float32((a >= low) & (a < high))
        partial[b] = s
    return partial.sum()


#: Small tensors run single-threaded: waking a thread pool costs more than they do.
PARALLEL_FROM = 1 << 20
_compile = {"cache": True, "boundscheck": False}
gta_merge_parallel = njit(parallel=True, **_compile)(_gta_merge)
gta_merge_serial = njit(**_compile)(_gta_merge)
# reassociation lets the block sums vectorise; they are fp32 over 4096 entries either way
masked_l1_parallel = njit(parallel=True, fastmath={"reassoc"}, **_compile)(_masked_l1)
masked_l1_serial = njit(fastmath={"reassoc"}, **_compile)(_masked_l1)


def gta_merge(base, *args) -> None:  # type: ignore[no-untyped-def]
    (gta_merge_parallel if base.shape[0] >= PARALLEL_FROM else gta_merge_serial)(base, *args)


def masked_l1(delta, *args) -> float:  # type: ignore[no-untyped-def]
    return float((masked_l1_parallel if delta.shape[0] >= PARALLEL_FROM else masked_l1_serial)(delta, *args))
