"""Fused CPU kernels for the task-arithmetic family (TIES, DARE, breadcrumbs) and the
scans that find a candidate's magnitude cuts.

Why hand-written: in eager PyTorch a TIES merge is some twenty full passes over
memory (mask, weight, stack, sign, compare, sum, divide ...), each allocating a
temporary; mergekit's version also sorts. One pass does it here: per entry, mask each
task vector, weight it, elect the sign, average, and write out. The arithmetic is
mergekit's, in its order, so results agree with it to the last bit or nearly.

A recipe computed in bf16 (mergekit's ``dtype: bfloat16``) runs the same pass with each
of mergekit's ops rounded to bf16 as torch rounds it (``bf16``): the result is mergekit's
bit for bit, at the fp32 pass's speed.

The engine feeds the kernel one chunk of fp32 task vectors at a time (formed from the
checkpoints' own dtype), with ``offset`` the chunk's first entry; from a bf16 checkpoint,
computed in fp32, it hands over the rows' own bf16 bits instead (``chunks(raw=True)``) and
the kernel widens each entry and subtracts the reference as it reads them: the same fp32
values, without a pass that writes the task vectors out and one that reads them back. Masks are decided per
entry ``j`` (its index in the whole tensor):

- magnitude masks (TIES, breadcrumbs): a *cut* per task vector, ``(lo, hi)`` magnitudes
  and index ranges for the entries equal to them (``masks.Cut``): kept when
  ``lo < |d| < hi``, or ``|d| == lo`` and ``ties[0] <= j <= ties[1]``, or ``|d| == hi`` and
  ``ties[2] <= j <= ties[3]``. The scans below find the cut for any density in two
  passes over the task vector, so no per-entry order is kept between candidates;
- random masks (DARE): a 15-bit level hashed from ``(seed, j)`` (murmur3's finaliser),
  kept below ``hi``: no stored keys either.

The per-entry code is generated for each number of task vectors (an ``overload``
keyed on the tuple's length), so every value lives in registers and LLVM vectorises
the loop. Numba compiles once per machine (``cache=True`` keeps the machine code next
to this file). On other devices the engine uses the eager PyTorch kernels.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange, types
from numba.extending import overload

_BLOCK = 1 << 16  # entries per parallel work item
_M32 = np.uint64(0xFFFFFFFF)
_K0, _K1, _K2 = np.uint64(0x9E3779B1), np.uint64(0x85EBCA6B), np.uint64(0xC2B2AE35)
_S13, _S16, _S17 = np.uint64(13), np.uint64(16), np.uint64(17)
_S16_32 = np.uint32(16)
_ROUND, _ONE, _HIGH = np.uint32(0x7FFF), np.uint32(1), np.uint32(0xFFFF0000)  # bf16 rounding


@njit(cache=True, inline="always")
def level(j, seed):  # pragma: no cover - compiled
    """Entry ``j``'s random level in [0, 2**15): murmur3's 32-bit finaliser of ``j * K0 + seed``
    (``masks.random_levels`` computes the same with torch)."""
    h = (np.uint64(j) * _K0 + seed) & _M32
    h ^= h >> _S16
    h = (h * _K1) & _M32
    h ^= h >> _S13
    h = (h * _K2) & _M32
    h ^= h >> _S16
    return h >> _S17


@njit(cache=True, inline="always")
def bf16(x):  # pragma: no cover - compiled
    """``x`` rounded to bf16 (to nearest, ties to even: torch's rounding), as an fp32."""
    bits = np.float32(x).view(np.uint32)
    bits = np.uint32((bits + _ROUND + ((bits >> _S16_32) & _ONE)) & _HIGH)  # numba widens to 64 bits
    return bits.view(np.float32)


@njit(cache=True, inline="always")
def widen(bits):  # pragma: no cover - compiled
    """A bf16 value, given as its 16 bits, as an fp32 (exact)."""
    return np.uint32(np.uint32(bits) << _S16_32).view(np.float32)  # numba widens the shift to 64 bits


def as_array(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor for the kernels: fp32 as is, bf16 as its bits (uint16: numpy has no bf16)."""
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()


#: Small tensors run single-threaded: waking a thread pool costs more than they do.
PARALLEL_FROM = 1 << 20


def _span(base, deltas, seeds, lo, hi, ties, offset, scale, weights, rescale, consensus, normalize, coefficients, out):
    """``out[j] = base[j] * c[0] + c[1] * combine_i(mask_ij * delta_ij * scale_i)`` over one span,
    ``c = coefficients``: (1, lambda) for the task-arithmetic family.

    Entry ``j`` (``offset + j`` in the tensor) of task vector ``i`` is kept as the module
    docstring says: a magnitude cut when ``seeds`` is None, else a random level below ``hi[i]``.
    ``combine`` is the sign-elected mean (TIES) when ``consensus``, else the sum;
    ``normalize`` divides by the weights that took part (by their sum without consensus,
    as mergekit does). ``c[0]`` is 1 there (and exact: x * 1 = x); linear and SLERP use it
    as the reference's coefficient.

    With ``rescale`` (an array, not None) the span computes in bf16 as mergekit does: every
    input is a bf16 value, and each of mergekit's ops (rescale by ``rescale[i]``, weight by
    ``weights[i]``, the sums, the division, lambda, adding the base) is one fp32 op rounded to
    bf16, as torch computes a bf16 op; ``scale`` and ``c[0]`` are unused there.
    Replaced in compiled code by the overload below.
    """
    raise NotImplementedError  # pragma: no cover


_SPAN_TEMPLATE = """
def span(base, deltas, seeds, lo, hi, ties, offset, scale, weights, rescale, consensus, normalize, coefficients, out):
    zero = np.float32(0.0)
    one = np.float32(1.0)
    base_scale = coefficients[0]
    delta_scale = coefficients[1]
    wsum = {wsum}
    if abs(wsum) < 1e-8:
        wsum = one
{setup}
    if consensus and normalize:
{consensus_normalize}
    elif consensus:
{consensus}
    elif normalize:
{normalize}
    else:
{plain}
"""

# One loop per (consensus, normalize): a flag tested inside the loop stops LLVM from vectorising it.
_LOOP = """for j in range(base.shape[0]):
    jj = offset + j
{mask}
{combine}
    out[j] = {out}"""
_CONSENSUS = """total = {total}
sign = one if {total_rounded} >= zero else -one
{agree}
mixed = {agreed}"""
_NORMALIZE_CONSENSUS = """divisor = {divisor}
mixed = {quotient}"""


def _indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.splitlines())


@overload(_span, jit_options={"boundscheck": False})
def _span_overload(
    base, deltas, seeds, lo, hi, ties, offset, scale, weights, rescale, consensus, normalize, coefficients, out
):
    each = range(len(deltas))
    rounding = not isinstance(rescale, types.NoneType)
    raw = base.dtype == types.uint16  # bf16 bits: task vectors formed here (chunks(raw=True))

    def r(expression: str) -> str:  # one bf16 op: the fp32 result, rounded
        return f"bf16({expression})" if rounding else expression

    if isinstance(seeds, types.NoneType):
        keep = (
            "((m{i} > lo{i}) | ((m{i} == lo{i}) & (jj >= la{i}) & (jj <= lb{i}))) & "
            "((m{i} < hi{i}) | ((m{i} == hi{i}) & (jj >= ha{i}) & (jj <= hb{i})))"
        )
        setup = (
            "lo{i} = lo[{i}]\nhi{i} = hi[{i}]\n"
            "la{i} = ties[{i}, 0]\nlb{i} = ties[{i}, 1]\nha{i} = ties[{i}, 2]\nhb{i} = ties[{i}, 3]"
        )
        load = "a{i} = d{i}[j]\nm{i} = abs(a{i})"
    else:
        keep = "np.float32(level(jj, sd{i})) < hi{i}"
        setup = "hi{i} = hi[{i}]\nsd{i} = seeds[{i}]"
        load = "a{i} = d{i}[j]"
    if raw:
        load = load.replace("d{i}[j]", "widen(d{i}[j]) - bj")
    setup += "\nd{i} = deltas[{i}]\ns{i} = scale[{i}]\nw{i} = weights[{i}]"
    if rounding:
        setup += "\nr{i} = rescale[{i}]"

    def lines(template: str) -> str:
        return "\n".join(template.format(i=i) for i in each)

    def terms(template: str) -> str:
        return " + ".join(template.format(i=i) for i in each)

    total = terms("x{i}")
    consensus_part = _CONSENSUS.format(
        total=total,
        total_rounded=r("total"),
        agree=lines("g{i} = x{i} * sign > zero"),
        agreed=r(terms("(x{i} if g{i} else zero)")),
    )
    divide = _NORMALIZE_CONSENSUS.format(
        divisor=r(terms("(w{i} if g{i} else zero)")), quotient=r("mixed / (divisor if divisor != zero else one)")
    )
    loops = {
        "consensus_normalize": consensus_part + "\n" + divide,
        "consensus": consensus_part,
        "normalize": f"mixed = {r(r(total) + ' / wsum')}",
        "plain": f"mixed = {r(total)}",
    }
    weighted = r(r("a{i} * r{i}") + " * w{i}") if rounding else "a{i} * s{i}"
    mask = lines(f"{load}\nx{{i}} = {weighted} if {keep} else zero")
    reference = "bj" if raw else "base[j]"
    out = (
        r(f"{reference} + " + r("mixed * delta_scale"))
        if rounding
        else f"{reference} * base_scale + mixed * delta_scale"
    )
    if raw:
        mask = "bj = widen(base[j])\n" + mask
    source = _SPAN_TEMPLATE.format(
        wsum=r(terms("weights[{i}]")),
        setup=_indent(lines(setup), 4),
        **{
            name: _indent(_LOOP.format(mask=_indent(mask, 4), combine=_indent(combine, 4), out=out), 8)
            for name, combine in loops.items()
        },
    )
    namespace = {"np": np, "level": level, "bf16": bf16, "widen": widen}
    exec(source, namespace)  # our own template, formatted with integers
    return namespace["span"]


def _slices(arrays, start, stop):
    raise NotImplementedError  # pragma: no cover - replaced by the overload below


@overload(_slices)
def _slices_overload(arrays, start, stop):
    if isinstance(arrays, types.NoneType):
        return lambda arrays, start, stop: None
    items = "".join(f"arrays[{i}][start:stop], " for i in range(len(arrays)))
    namespace: dict = {}
    exec(f"def slices(arrays, start, stop):\n    return ({items})\n", namespace)  # our own template
    return namespace["slices"]


_compile = {"cache": True, "boundscheck": False}


@njit(parallel=True, **_compile)
def _merge_parallel(
    base, deltas, seeds, lo, hi, ties, offset, scale, weights, rescale, consensus, normalize, coefficients, out
):  # pragma: no cover
    size = base.shape[0]
    blocks = (size + _BLOCK - 1) // _BLOCK
    for b in prange(blocks):
        # each work item sees its own contiguous slices: LLVM then vectorises the span
        start, stop = b * _BLOCK, min(size, (b + 1) * _BLOCK)
        _span(
            base[start:stop],
            _slices(deltas, start, stop),
            seeds,
            lo,
            hi,
            ties,
            offset + start,
            scale,
            weights,
            rescale,
            consensus,
            normalize,
            coefficients,
            out[start:stop],
        )


@njit(**_compile)
def _merge_serial(
    base, deltas, seeds, lo, hi, ties, offset, scale, weights, rescale, consensus, normalize, coefficients, out
):  # pragma: no cover
    _span(base, deltas, seeds, lo, hi, ties, offset, scale, weights, rescale, consensus, normalize, coefficients, out)


def gta_merge(
    base: np.ndarray,
    deltas: tuple[np.ndarray, ...],
    masks: MaskArrays,
    offset: int,
    scale: np.ndarray,
    weights: np.ndarray,
    consensus: bool,
    normalize: bool,
    lam: float,
    out: np.ndarray,
    base_scale: float = 1.0,
    bf16_rescale: np.ndarray | None = None,
) -> None:
    """One fused pass over a chunk (see ``_span``): ``deltas`` is a tuple of 1-D fp32 arrays,
    ``masks`` the candidate's cuts or random levels, ``offset`` the chunk's first entry.
    ``bf16_rescale``: compute in bf16 as mergekit does (inputs, ``weights`` and these
    rescale factors all bf16 values), rather than in fp32 with ``scale = rescale * weight``."""
    kernel = _merge_parallel if base.shape[0] >= PARALLEL_FROM else _merge_serial
    coefficients = np.array([base_scale, lam], np.float32)
    seeds, lo, hi, ties = masks
    kernel(
        base, deltas, seeds, lo, hi, ties, offset, scale, weights, bf16_rescale, consensus, normalize, coefficients, out
    )


#: (seeds or None, lo, hi, ties): what ``gta_merge`` reads of a candidate's masks
MaskArrays = tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]


def keep_all(n: int) -> MaskArrays:
    """Magnitude cuts that keep every entry of ``n`` task vectors."""
    return None, np.full(n, -1, np.float32), np.full(n, np.inf, np.float32), np.zeros((n, 4), np.int64)


def combine(rows: tuple[np.ndarray, ...], coefficients: list[float], out: np.ndarray) -> None:
    """``out = sum_r c_r * rows[r]`` in one pass (linear, task arithmetic, SLERP): the span
    kernel with every entry kept, no election and no normalisation."""
    c = np.asarray(coefficients[1:], np.float32)
    gta_merge(rows[0], rows[1:], keep_all(len(c)), 0, c, c, False, False, 1.0, out, base_scale=coefficients[0])


# -- scans of one task vector (fp32, a chunk at a time) ---------------------------------


@njit(cache=True)
def magnitude_histogram(delta, counts):  # pragma: no cover - compiled
    """``counts[b] += #entries whose |delta| has top 16 bits b`` (the order of fp32 bit
    patterns of non-negative values is their numeric order)."""
    bits = delta.view(np.uint32)
    for j in range(bits.shape[0]):
        counts[(bits[j] & 0x7FFFFFFF) >> 16] += 1


@njit(cache=True)
def bucket_histogram(delta, bucket, counts):  # pragma: no cover - compiled
    """``counts[low] += #entries of magnitude bucket ``bucket`` whose low 16 bits are ``low``."""
    bits = delta.view(np.uint32)
    for j in range(bits.shape[0]):
        b = bits[j] & 0x7FFFFFFF
        if (b >> 16) == bucket:
            counts[b & 0xFFFF] += 1


@njit(cache=True)
def find_equal(delta, value_bits, nth):  # pragma: no cover - compiled
    """(position of the ``nth`` (0-based) entry with |delta| bits ``value_bits``, or -1; how
    many such entries came before it, or in all)."""
    bits = delta.view(np.uint32)
    seen = 0
    for j in range(bits.shape[0]):
        if (bits[j] & 0x7FFFFFFF) == value_bits:
            if seen == nth:
                return j, seen
            seen += 1
    return -1, seen


@njit(cache=True)
def level_l1(delta, seed, offset, table):  # pragma: no cover - compiled
    """``table[v] += sum |delta|`` over the entries whose random level is ``v``."""
    for j in range(delta.shape[0]):
        table[level(offset + j, seed)] += abs(delta[j])


@njit(cache=True)
def cut_l1(delta, lo, hi, ties, offset):  # pragma: no cover - compiled
    """``sum |delta|`` over what a magnitude cut keeps (fp64 accumulation)."""
    total = 0.0
    for j in range(delta.shape[0]):
        m = abs(delta[j])
        jj = offset + j
        if ((m > lo) | ((m == lo) & (jj >= ties[0]) & (jj <= ties[1]))) & (
            (m < hi) | ((m == hi) & (jj >= ties[2]) & (jj <= ties[3]))
        ):
            total += m
    return total
