"""Fused CPU kernels for the task-arithmetic family (TIES, DARE, breadcrumbs).

Why hand-written: in eager PyTorch a TIES merge is some twenty full passes over
memory (mask, weight, stack, sign, compare, sum, divide ...), each allocating a
temporary; mergekit's version also sorts. With the sort replaced by once-per-run
work (``sparsify.py``), one pass over the inputs does it: per entry, mask each task
vector, weight it, elect the sign, average, and write straight into the live
parameter. The arithmetic is mergekit's, in its order, so results agree with it to
the last bit or nearly.

Masks are decided per entry, ``lo[i] < key < hi[i]``:

- magnitude masks (TIES, breadcrumbs): the key is ``|delta|`` itself, so a candidate reads
  nothing but the reference and the task vectors. The engine derives the bounds from
  the once-per-run sort; entries whose magnitude equals a bound (ties at the cut) are
  decided by rank and merged again afterwards (``Merger._fused_gta``);
- random masks (DARE): the key is the entry's int16 random level (``sparsify.py``).

The per-entry code is generated for each number of task vectors (an ``overload``
keyed on the tuple's length), so every value lives in registers and LLVM vectorises
the loop: 5x faster than a loop over endpoints through scratch rows. Numba compiles
once per machine (``cache=True`` keeps the machine code next to this file). On other
devices the engine uses the eager PyTorch kernels.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

_BLOCK = 1 << 16  # entries per parallel work item
#: Small tensors run single-threaded: waking a thread pool costs more than they do.
PARALLEL_FROM = 1 << 20


def _span(base, deltas, keys, lo, hi, scale, weights, consensus, normalize, coefficients, out):  # type: ignore[no-untyped-def]
    """``out[j] = base[j] * c[0] + c[1] * combine_i(mask_ij * delta_ij * scale_i)`` over one span,
    ``c = coefficients``: (1, lambda) for the task-arithmetic family.

    Entry ``j`` of task vector ``i`` is kept when ``lo[i] < key < hi[i]``, the key being
    ``|delta_ij|`` when ``keys`` is None (magnitude masks) or ``keys[i][j]`` (random levels).
    ``combine`` is the sign-elected mean (TIES) when ``consensus``, else the sum;
    ``normalize`` divides by the weights that took part (by their sum without consensus,
    as mergekit does). ``c[0]`` is 1 there (and exact: x * 1 = x); linear and SLERP use it
    as the reference's coefficient. Replaced in compiled code by the overload below.
    """
    raise NotImplementedError  # pragma: no cover


_SPAN_TEMPLATE = """
def span(base, deltas, keys, lo, hi, scale, weights, consensus, normalize, coefficients, out):
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
{mask}
{combine}
    out[j] = base[j] * base_scale + mixed * delta_scale"""
_CONSENSUS = """total = {total}
sign = one if total >= zero else -one
{agree}
mixed = {agreed}"""
_NORMALIZE_CONSENSUS = """divisor = {divisor}
mixed = mixed / (divisor if divisor != zero else one)"""


def _indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.splitlines())


@overload(_span, jit_options={"boundscheck": False})
def _span_overload(base, deltas, keys, lo, hi, scale, weights, consensus, normalize, coefficients, out):  # type: ignore[no-untyped-def]
    each = range(len(deltas))
    key = "abs(a{i})" if isinstance(keys, types.NoneType) else "k{i}[j]"
    keep = f"({key} > lo{{i}}) & ({key} < hi{{i}})"
    setup = "lo{i} = lo[{i}]\nhi{i} = hi[{i}]" + ("" if isinstance(keys, types.NoneType) else "\nk{i} = keys[{i}]")

    def lines(template: str) -> str:
        return "\n".join(template.format(i=i) for i in each)

    def terms(template: str) -> str:
        return " + ".join(template.format(i=i) for i in each)

    total = terms("x{i}")
    consensus_part = _CONSENSUS.format(
        total=total, agree=lines("g{i} = x{i} * sign > zero"), agreed=terms("(x{i} if g{i} else zero)")
    )
    divide = _NORMALIZE_CONSENSUS.format(divisor=terms("(w{i} if g{i} else zero)"))
    loops = {
        "consensus_normalize": consensus_part + "\n" + divide,
        "consensus": consensus_part,
        "normalize": f"mixed = ({total}) / wsum",
        "plain": f"mixed = {total}",
    }
    mask = lines(f"a{{i}} = d{{i}}[j]\nx{{i}} = a{{i}} * s{{i}} if {keep} else zero")
    source = _SPAN_TEMPLATE.format(
        wsum=terms("weights[{i}]"),
        setup=_indent(lines(setup + "\nd{i} = deltas[{i}]\ns{i} = scale[{i}]\nw{i} = weights[{i}]"), 4),
        **{
            name: _indent(_LOOP.format(mask=_indent(mask, 4), combine=_indent(combine, 4)), 8)
            for name, combine in loops.items()
        },
    )
    namespace = {"np": np}
    exec(source, namespace)  # our own template, formatted with integers
    return namespace["span"]


def _slices(arrays, start, stop):  # type: ignore[no-untyped-def]
    raise NotImplementedError  # pragma: no cover - replaced by the overload below


@overload(_slices)
def _slices_overload(arrays, start, stop):  # type: ignore[no-untyped-def]
    if isinstance(arrays, types.NoneType):
        return lambda arrays, start, stop: None
    items = "".join(f"arrays[{i}][start:stop], " for i in range(len(arrays)))
    namespace: dict = {}
    exec(f"def slices(arrays, start, stop):\n    return ({items})\n", namespace)  # our own template
    return namespace["slices"]


_compile = {"cache": True, "boundscheck": False}


@njit(parallel=True, **_compile)
def _merge_parallel(base, deltas, keys, lo, hi, scale, weights, consensus, normalize, coefficients, out):  # type: ignore[no-untyped-def]  # pragma: no cover
    size = base.shape[0]
    blocks = (size + _BLOCK - 1) // _BLOCK
    for b in prange(blocks):
        # each work item sees its own contiguous slices: LLVM then vectorises the span
        start, stop = b * _BLOCK, min(size, (b + 1) * _BLOCK)
        _span(
            base[start:stop],
            _slices(deltas, start, stop),
            _slices(keys, start, stop),
            lo,
            hi,
            scale,
            weights,
            consensus,
            normalize,
            coefficients,
            out[start:stop],
        )


@njit(**_compile)
def _merge_serial(base, deltas, keys, lo, hi, scale, weights, consensus, normalize, coefficients, out):  # type: ignore[no-untyped-def]  # pragma: no cover
    _span(base, deltas, keys, lo, hi, scale, weights, consensus, normalize, coefficients, out)


def gta_merge(
    base: np.ndarray,
    deltas: tuple[np.ndarray, ...],
    keys: tuple[np.ndarray, ...] | None,
    lo: np.ndarray,
    hi: np.ndarray,
    scale: np.ndarray,
    weights: np.ndarray,
    consensus: bool,
    normalize: bool,
    lam: float,
    out: np.ndarray,
    base_scale: float = 1.0,
) -> None:
    """One fused pass over a tensor (see ``_span``): ``deltas`` and ``keys`` are tuples of 1-D
    arrays, ``lo``/``hi`` float32 (magnitudes) or int32 (keys)."""
    kernel = _merge_parallel if base.shape[0] >= PARALLEL_FROM else _merge_serial
    coefficients = np.array([base_scale, lam], np.float32)
    kernel(base, deltas, keys, lo, hi, scale, weights, consensus, normalize, coefficients, out)


def keep_all(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude bounds ``(lo, hi)`` that keep every entry of ``n`` task vectors."""
    return np.full(n, -1, np.float32), np.full(n, np.inf, np.float32)


def combine(rows: tuple[np.ndarray, ...], coefficients: list[float], out: np.ndarray) -> None:
    """``out = sum_r c_r * rows[r]`` in one pass (linear, task arithmetic, SLERP): the span
    kernel with every entry kept, no election and no normalisation."""
    c = np.asarray(coefficients[1:], np.float32)
    gta_merge(rows[0], rows[1:], None, *keep_all(len(c)), c, c, False, False, 1.0, out, base_scale=coefficients[0])


def _masked_l1(delta, lo, hi):  # type: ignore[no-untyped-def]  # pragma: no cover
    """``sum |delta|`` over ``lo < |delta| < hi``, without forming the mask."""
    size = delta.shape[0]
    blocks = (size + _BLOCK - 1) // _BLOCK
    partial = np.zeros(blocks, dtype=np.float64)
    zero = np.float32(0.0)
    for b in prange(blocks):
        s = zero  # fp32 within a block, fp64 across blocks
        for j in range(b * _BLOCK, min(size, (b + 1) * _BLOCK)):
            a = abs(delta[j])
            s += a if (a > lo) & (a < hi) else zero
        partial[b] = s
    return partial.sum()


# reassociation lets the block sums vectorise; they are fp32 over a block either way
_masked_l1_parallel = njit(parallel=True, fastmath={"reassoc"}, **_compile)(_masked_l1)
_masked_l1_serial = njit(fastmath={"reassoc"}, **_compile)(_masked_l1)


def masked_l1(delta: np.ndarray, lo: float, hi: float) -> float:
    kernel = _masked_l1_parallel if delta.shape[0] >= PARALLEL_FROM else _masked_l1_serial
    return float(kernel(delta, np.float32(lo), np.float32(hi)))
