"""The merge engine's memory model: what each placement tier holds, and which one fits.

A search merges many candidates over the same models, so the engine keeps the models'
tensors where a candidate can read them fast. Where that is depends on the memory at
hand (a 7B base and two fine-tunes are 42 GB in bf16):

- ``device``: every model's tensors, in the checkpoints' own dtype, on the merge device;
- ``host``: the same in CPU RAM (pinned when the merge device is a GPU), copied to the
  device tensor by tensor as a candidate is merged. On a CPU merge device this is the
  same memory as ``device``;
- ``hybrid``: what the budget holds of the ``host`` tier's stacks, largest first, kept in
  RAM (pinned on a GPU); each candidate reads only the others from the checkpoints. ``auto``
  takes it when ``host`` does not fit but some stacks do;
- ``disk``: nothing cached; each candidate reads its tensors from the checkpoints (the
  OS page cache keeps what RAM allows).

Every tier forms task vectors in fp32, chunk by chunk, while a candidate is merged, so
all of them give bit-identical candidates. Besides the cache a run needs the live model,
the working set of the largest tensor, small per-run tables (a magnitude histogram and
a random-level L1 table per tensor and endpoint) and headroom for evaluation (KV cache,
activations). ``plan`` adds these up from the checkpoints' headers alone, before any
tensor is read, and ``auto`` takes the fastest tier that fits the budget.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..errors import MemoryBudgetError, MergeConfigError
from ..models.pool import ModelPool

log = logging.getLogger(__name__)

Tier = Literal["auto", "device", "host", "hybrid", "disk"]
TIERS: tuple[str, ...] = ("device", "host", "hybrid", "disk")
GiB = 1024**3
#: Entries a candidate converts to fp32 at a time (per model): the fp32 working set is
#: (models + 2) chunks, whatever the tensor's size.
CHUNK = {"cpu": 1 << 20, "other": 1 << 24}
#: Per tensor and endpoint: a 32768-bucket magnitude histogram (int64) and a 32768-level
#: L1 table (float64), each built once a method needs it.
TABLE_BYTES = 2 * 32768 * 8
#: Room left for evaluation next to the live model: activations, KV cache, the allocator.
EVAL_HEADROOM = GiB
#: ``merge.memory_budget`` accepts a number of bytes or a size such as "24GB", "80GiB", "512MB".
_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": GiB}


def parse_size(value: int | float | str) -> int:
    """Bytes from a number or a size with a unit ("24GB", "80 GiB", "512MiB")."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value <= 0:
            raise MergeConfigError(f"a memory size must be positive, got {value}")
        return int(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise MergeConfigError(f"cannot read {value!r} as a memory size; write e.g. 24GB, 80GiB or 512MB")
    return parse_size(float(match.group(1)) * _UNITS[unit])


def gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"


def available_ram() -> int:
    """Free RAM as the kernel would grant it: MemAvailable, capped by a cgroup memory limit."""
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        meminfo = Path("/proc/meminfo").read_text()
        free = int(re.search(r"MemAvailable:\s+(\d+) kB", meminfo).group(1)) * 1024  # type: ignore[union-attr]
    except (OSError, AttributeError):
        pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit != "max" and int(limit) < 2**60:
                free = min(free, int(limit) - int(Path(usage_file).read_text()))
        except (OSError, ValueError):
            continue
    return max(0, free)


def available(device: torch.device) -> int:
    """Free memory on the merge device."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return available_ram()


@dataclass(frozen=True)
class Footprint:
    """A pool's sizes in bytes, read from the checkpoints' headers."""

    cache: int  # every model's tensors in their own dtype (vocabulary-aligned ones in fp32)
    live: int  # the live model: the base in its dtype
    largest: int  # the largest tensor's entries
    largest_stack: int  # the largest tensor of every model, in its dtype (one disk-tier read)
    tables: int  # the per-run tables for every tensor and endpoint
    models: int
    chunk: int  # entries per chunk on the merge device

    @property
    def work(self) -> int:
        """A candidate's fp32 working set: chunks, plus a full fp32 tensor for the eager kernels."""
        return (self.models + 2) * self.chunk * 4 + 2 * self.largest * 4


def stack_sizes(pool: ModelPool) -> dict[str, int]:
    """Each merged tensor's stack (every model's tensor, in its dtype), in bytes."""
    names = [n for n in pool.tensor_names if pool.base.dtype(n).is_floating_point]
    return {n: sum(m.dtype(n).itemsize * m.numel(n) for m in pool.models) for n in names}


def footprint(pool: ModelPool, device: torch.device) -> Footprint:
    stacks = stack_sizes(pool)
    merged = list(stacks)
    cache, largest_stack = sum(stacks.values()), max(stacks.values(), default=0)
    live = sum(pool.base.dtype(n).itemsize * pool.base.numel(n) for n in merged)
    largest = max((pool.base.numel(n) for n in merged), default=0)
    chunk = CHUNK["cpu" if device.type == "cpu" else "other"]
    return Footprint(cache, live, largest, largest_stack, TABLE_BYTES * len(merged) * len(pool.endpoints),
                     len(pool.models), chunk)  # fmt: skip


def tier_needs(f: Footprint, *, on_gpu: bool, live: bool = True) -> tuple[dict[str, int], dict[str, int]]:
    """Bytes each tier needs on the merge device, and in host RAM (``host`` on a GPU)."""
    base = (f.live + EVAL_HEADROOM if live else 0) + f.work + f.tables
    device_needs = {
        "device": base + f.cache,
        "host": base + (f.largest_stack if on_gpu else f.cache),  # a GPU stages one tensor's stack
        "disk": base + f.largest_stack,
    }
    return device_needs, {"device": 0, "host": f.cache if on_gpu else 0, "disk": 0}  # plan() adds hybrid


def hybrid_stacks(sizes: dict[str, int], room: int) -> tuple[str, ...]:
    """The stacks the hybrid tier keeps within ``room`` bytes: largest first (each read
    saved is a stack's bytes; a large one costs fewer reads per byte), then smaller ones
    that still fit. Deterministic: ties go by name."""
    kept, used = [], 0
    for name, size in sorted(sizes.items(), key=lambda item: (-item[1], item[0])):
        if used + size <= room:
            kept.append(name)
            used += size
    return tuple(kept)


@dataclass(frozen=True)
class MemoryPlan:
    """The tier a Merger uses, what each tier would need (bytes on the merge device, and in
    host RAM for ``host`` on a GPU), the budget it was held to, and why. ``cached``: the
    stacks the hybrid tier keeps (every other tier: none, or all)."""

    tier: str
    device_needs: dict[str, int]
    host_needs: dict[str, int]
    budget: int
    host_budget: int
    footprint: Footprint
    reason: str
    cached: tuple[str, ...] = ()
    cached_bytes: int = 0

    def describe(self) -> str:
        f = self.footprint
        kept = (
            f"; it keeps {len(self.cached)} tensors' stacks, {gib(self.cached_bytes)} of {gib(f.cache)}, and reads "
            f"the rest for each candidate"
            if self.tier == "hybrid"
            else ""
        )
        return (
            f"merge tier {self.tier}: {self.reason}{kept} (cache {gib(f.cache)}, live model {gib(f.live)}, "
            f"tables {gib(f.tables)}, working set {gib(f.work)}, evaluation headroom {gib(EVAL_HEADROOM)})"
        )


def plan(
    pool: ModelPool,
    device: torch.device,
    *,
    tier: str = "auto",
    budget: int | str | None = None,
    live: bool = True,
) -> MemoryPlan:
    """Choose the tier (``auto``: the fastest that fits) or check the one asked for.

    ``budget``: bytes the merge device may use (default: its free memory now, before the
    live model is loaded). ``live=False`` for a one-off merge that streams to disk: no
    live model and no evaluation headroom.
    """
    if tier not in ("auto", *TIERS):
        raise MergeConfigError(f"unknown merge tier {tier!r}; use auto, device, host, hybrid or disk")
    f = footprint(pool, device)
    on_gpu = device.type != "cpu"
    device_needs, host_needs = tier_needs(f, on_gpu=on_gpu, live=live)
    limit = available(device) if budget is None else parse_size(budget)
    host_limit = available_ram() if on_gpu else limit
    source = "merge.memory_budget" if budget is not None else f"free memory on {device}"

    # The hybrid tier: what the room beside the disk tier's needs holds (host RAM on a GPU).
    room = (host_limit - GiB) if on_gpu else (limit - device_needs["disk"])
    sizes = stack_sizes(pool)
    cached = hybrid_stacks(sizes, max(0, room))
    cached_bytes = sum(sizes[n] for n in cached)
    device_needs["hybrid"] = device_needs["disk"] + (0 if on_gpu else cached_bytes)
    host_needs["hybrid"] = cached_bytes if on_gpu else 0

    def fits(t: str) -> bool:
        worth = t != "hybrid" or (tier == "hybrid" or bool(cached))  # auto: a hybrid that keeps nothing is disk
        return device_needs[t] <= limit and host_needs[t] <= host_limit and worth

    def made(t: str, reason: str) -> MemoryPlan:
        kept = (cached, cached_bytes) if t == "hybrid" else ((), 0)
        return MemoryPlan(t, device_needs, host_needs, limit, host_limit, f, reason, *kept)

    if tier == "auto":
        order = ("device", "host", "hybrid", "disk") if on_gpu else ("device", "hybrid", "disk")
        chosen = next((t for t in order if fits(t)), None)
        if chosen is None:
            raise MemoryBudgetError(
                f"the merge does not fit: even the disk tier needs {gib(device_needs['disk'])} on {device} "
                f"(live model {gib(f.live if live else 0)}, largest tensor of every model {gib(f.largest_stack)}, "
                f"working set {gib(f.work)}, tables {gib(f.tables)}), but {source} is {gib(limit)}. "
                "Free memory, raise merge.memory_budget if more is really free, or merge fewer or smaller models."
            )
        skipped = [t for t in order[: order.index(chosen)] if t != "hybrid"]
        why = ", ".join(f"{t} needs {gib(device_needs[t] + host_needs[t])}" for t in skipped)
        reason = f"the fastest tier within {source} ({gib(limit)})" + (f"; {why}" if why else "")
        return made(chosen, reason)
    if not fits(tier):
        where = f"{gib(device_needs[tier])} on {device}" + (
            f" and {gib(host_needs[tier])} of host RAM" if host_needs[tier] else ""
        )
        raise MemoryBudgetError(
            f"merge tier {tier} needs {where}, but {source} is {gib(limit)}"
            + (f" (host RAM free: {gib(host_limit)})" if on_gpu else "")
            + ". Use merge.tier: auto (the fastest tier that fits) or disk, or raise merge.memory_budget."
        )
    return made(tier, f"asked for, within {source}")
