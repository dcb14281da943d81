"""numpy's and scipy's OpenBLAS kept to one thread while a run goes.

OpenBLAS threads spin for a while after each call. Between candidates, the IRT
estimate (scipy), k-means and the algorithm's numpy work wake them, and they then take
the cores from torch's merge and generation: on the demo family (2 cores) a candidate's
merge went from 4 ms to a median of 17 ms and up to 126 ms, and its evaluation took a
third longer. Those numpy calls are small (anchors x IRT dimensions), so one thread
costs them nothing. torch's own threads (OpenMP) are left alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import cache
from typing import Any


@cache
def _controller() -> Any:
    import numpy  # noqa: F401 - loads the BLAS libraries the controller is to find
    import scipy.linalg  # noqa: F401
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(internal_api="openblas")


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """numpy's and scipy's OpenBLAS on one thread inside, as before after."""
    with _controller().limit(limits=1):
        yield


def keep_blas_to_one_thread() -> None:
    """For the rest of the process (a Ray worker, whose whole life is a run)."""
    _controller().limit(limits=1)
