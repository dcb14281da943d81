"""Memory and speed of the merge engine at a realistic size, per tier, against the paths
users have today.

Builds (once, cached) a synthetic Llama-shaped family in bf16: a base of about 0.5B
parameters (hidden 1536, 16 layers, MLP 4096, vocabulary 32000, untied embeddings) and
3 endpoints (base + noise, rounded to bf16, as fine-tunes are). Then, each measurement
in a fresh process so that its peak RSS is its own, for task_arithmetic, ties and
dare_ties:

- each tier (``device``, ``host``, ``hybrid`` with a budget that holds half the stacks,
  ``disk``): a live model is loaded, and ``--candidates``
  recipes (random weights and densities) are merged into it; the first merge (which
  builds the cache and the per-run tables) and the median of the others are timed;
  in the same process, a ``copy_`` of the live model's bytes (the floor of any merge
  that writes every parameter);
- the Mergenetic path: ``mergekit-yaml`` to disk, then ``from_pretrained``, per candidate;
- a one-off merge to disk: ``evomerge merge`` (streamed) vs ``mergekit-yaml``.

On a CPU merge device ``host`` and ``device`` are the same memory (both are measured).
Targets (issue 14): host peak <= live + (endpoints + 1) x params x 2 B + 1 GiB; disk
peak <= live + 1.5 GiB; evomerge merge peak and time <= 1.5x mergekit-yaml's; a host-tier
candidate >= 5x faster than the Mergenetic path; (issue 32) a hybrid candidate reads about
half the disk tier's bytes (counted) in <= 0.6x its time, its peak within its budget.
Ends with one JSON line.

Usage: ``python bench/scale.py [--family DIR] [--candidates 4] [--methods ties,...]``
(``--small`` builds a 30M-parameter family, for a quick check of the script itself;
``--cold`` evicts the checkpoints from the page cache before each candidate, as a pool
larger than RAM has it; ``--no-one-off`` skips the merges to disk).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

GiB = 1024**3
METHODS = ("task_arithmetic", "ties", "dare_ties")
TIERS = ("device", "host", "hybrid", "disk")
SHAPES = {
    "0.5b": {"hidden_size": 1536, "intermediate_size": 4096, "num_hidden_layers": 16, "vocab_size": 32000},
    "small": {"hidden_size": 384, "intermediate_size": 1024, "num_hidden_layers": 4, "vocab_size": 32000},
}


def peak_rss() -> int:
    """This process's peak RSS: VmHWM, which starts afresh at exec (``ru_maxrss`` does not: a
    child's counts the RSS of the process it was forked from)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


#: Runs a command and prints its peak RSS and seconds: a small interpreter in between, so the
#: command is forked from a process of a few MB, not from this one (see ``peak_rss``).
_LAUNCHER = (
    "import os, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)\n"
    "out = p.stdout.read()\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "sys.stdout.buffer.write(out)\n"
    "print('\\nMEASURED', os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024, time.perf_counter() - t)\n"
)


def build_family(root: Path, shape: str) -> Path:
    """Base + 3 endpoints, bf16 safetensors; skipped when ``root`` holds them already."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if (root / "e3" / "config.json").exists():
        return root
    size = SHAPES[shape]
    config = LlamaConfig(
        **size,
        num_attention_heads=size["hidden_size"] // 128,
        num_key_value_heads=max(1, size["hidden_size"] // 512),
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tmp = root.with_name(root.name + ".tmp")
    for i, name in enumerate(("base", "e1", "e2", "e3")):
        with torch.no_grad():
            for k, p in model.state_dict().items():
                p.copy_(base[k] if i == 0 else (base[k].float() + 0.004 * torch.randn(p.shape)).to(p.dtype))
        model.save_pretrained(tmp / name)
    tmp.rename(root)
    return root


def mergekit_config(method: str, family: Path, seed: int, dtype: str = "float32") -> dict:
    g = torch.Generator().manual_seed(seed)
    models = []
    for e in ("e1", "e2", "e3"):
        params: dict = {"weight": round(float(torch.rand(1, generator=g)) * 1.2 - 0.1, 3)}
        if method != "task_arithmetic":
            params["density"] = round(0.2 + 0.6 * float(torch.rand(1, generator=g)), 3)
        models.append({"model": str(family / e), "parameters": params})
    return {"merge_method": method, "base_model": str(family / "base"), "models": models, "dtype": dtype,
            "out_dtype": "bfloat16"}  # fmt: skip


def worker_tier(args: dict) -> dict:
    """One tier x method in this process: merge ``candidates`` recipes into a live model."""
    from evomerge.merge import Merger, Recipe
    from evomerge.merge.memory import plan
    from evomerge.merge.run import load_live_model

    family = Path(args["family"])
    dtype = args.get("dtype", "float32")
    recipes = [
        Recipe.from_mergekit(mergekit_config(args["method"], family, s, dtype)) for s in range(args["candidates"])
    ]
    start = time.perf_counter()
    budget = None
    if args["tier"] == "hybrid":  # a budget that holds half the stacks beside the disk tier's needs
        disk = plan(Merger.for_recipe(recipes[0], tier="disk").pool, torch.device("cpu"), tier="disk", budget=10**15)
        budget = disk.device_needs["disk"] + disk.footprint.cache // 2
    merger = Merger.for_recipe(recipes[0], tier=args["tier"], memory_budget=budget)
    model = load_live_model(merger)
    load_s = time.perf_counter() - start
    after_load = peak_rss()
    times, reads = [], []
    for recipe in recipes:
        if args.get("cold"):
            evict(family)
        t = time.perf_counter()
        before = merger.cache.bytes_read
        merger.merge_into(model, recipe)
        times.append(time.perf_counter() - t)
        reads.append(merger.cache.bytes_read - before)
    peak = peak_rss()  # before the copy's scratch
    # the floor: every parameter's bytes written once, from a scratch of the largest one's size
    params = list(model.parameters())
    scratch = torch.randn(max(p.numel() for p in params)).to(params[0].dtype)
    copies = []
    for _ in range(3):
        t = time.perf_counter()
        for p in params:
            p.data.copy_(scratch[: p.numel()].view_as(p))
        copies.append(time.perf_counter() - t)
    return {
        "tier": merger.tier,
        "method": args["method"],
        "predicted": merger.plan.device_needs[merger.tier],
        "live_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "params": sum(p.numel() for p in model.parameters()),
        "load_s": round(load_s, 2),
        "first_merge_s": round(times[0], 3),
        "merge_s": round(statistics.median(times[1:]), 3),
        "read_per_candidate": int(statistics.median(reads[1:])),  # bytes read from the checkpoints
        "budget": budget,
        "copy_s": round(min(copies), 3),
        "rss_after_load": after_load,
        "peak_rss": peak,
    }


def evict(family: Path) -> None:
    """Drop the family's files from the OS page cache (``posix_fadvise(DONTNEED)``; no root
    needed): each candidate then reads from the disk, as with a pool larger than RAM (a 7B
    pool on a 24 GB box), instead of from RAM the page cache lent."""
    for file in family.rglob("*.safetensors"):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_measured(cmd: list[str]) -> tuple[float, int, str]:
    """(seconds, peak RSS, output) of one command, run through ``_LAUNCHER``."""
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, *cmd], capture_output=True, text=True, check=True)
    out, _, last = done.stdout.rstrip().rpartition("\nMEASURED ")
    code, peak, seconds = last.split()
    if int(code) != 0:
        raise RuntimeError(f"{cmd[:3]} failed:\n{out[-3000:]}")
    return float(seconds), int(peak), out


def worker(spec: dict) -> dict:
    line = run_measured([sys.executable, __file__, "--worker", json.dumps(spec)])[2].strip().splitlines()[-1]
    return json.loads(line)


def differing_entries(a: Path, b: Path) -> tuple[int, int]:
    """(entries that differ, entries) between two merged checkpoints (shards named as each
    writer names them), a tensor at a time."""
    from safetensors import safe_open

    def where(root: Path) -> dict[str, Path]:
        found = {}
        for file in sorted(root.glob("*.safetensors")):
            with safe_open(file, "pt") as f:
                found.update(dict.fromkeys(f.keys(), file))
        return found

    ours, theirs = where(a), where(b)
    differ = total = 0
    for name, file in ours.items():
        with safe_open(file, "pt") as x, safe_open(theirs[name], "pt") as y:
            t = x.get_tensor(name)
            differ += int((t != y.get_tensor(name)).sum())
            total += t.numel()
    return differ, total


def mergenetic_path(method: str, family: Path, tmp: Path, dtype: str = "float32") -> dict:
    """mergekit-yaml to disk + from_pretrained (what a search built on mergekit pays per candidate);
    ``dtype``: the recipe's compute dtype (mergekit's ``dtype:``)."""
    config = tmp / f"{method}.yml"
    import yaml

    config.write_text(yaml.safe_dump(mergekit_config(method, family, 0, dtype)))
    out = tmp / f"mk-{method}"
    merge_s, merge_peak, _ = run_measured([str(Path(sys.executable).parent / "mergekit-yaml"), str(config), str(out)])
    load = f"import time,torch;from transformers import AutoModelForCausalLM as A;t=time.perf_counter();A.from_pretrained({str(out)!r},dtype='auto');print(time.perf_counter()-t)"  # noqa: E501
    _, _, printed = run_measured([sys.executable, "-c", load])
    load_s = float(printed.strip().splitlines()[-1])
    ours = tmp / f"ours-{method}"
    ours_s, ours_peak, _ = run_measured([sys.executable, "-m", "evomerge", "merge", str(config), "--out", str(ours)])
    differ, total = differing_entries(ours, out)
    return {
        "differ_fraction": differ / total,
        "method": method,
        "mergekit_yaml_s": round(merge_s, 2),
        "mergekit_yaml_peak": merge_peak,
        "from_pretrained_s": round(load_s, 2),
        "mergenetic_s": round(merge_s + load_s, 2),
        "evomerge_merge_s": round(ours_s, 2),
        "evomerge_merge_peak": ours_peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", type=Path, default=None)
    parser.add_argument("--small", action="store_true", help="a 30M-parameter family: checks the script quickly")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--tiers", default=",".join(TIERS))
    parser.add_argument("--no-one-off", action="store_true", help="skip mergekit-yaml and evomerge merge")
    parser.add_argument("--cold", action="store_true", help="evict the checkpoints from the page cache per candidate")
    parser.add_argument("--one-off-only", action="store_true", help="only mergekit-yaml against evomerge merge")
    parser.add_argument("--dtype", default="float32", help="the recipes' compute dtype (mergekit's dtype:)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker_tier(json.loads(args.worker))))
        return
    shape = "small" if args.small else "0.5b"
    cache = Path(os.environ.get("EVOMERGE_CACHE", Path.home() / ".cache" / "evomerge"))
    family = build_family(args.family or cache / f"bench-scale-{shape}", shape)
    methods, tiers = args.methods.split(","), args.tiers.split(",")
    results = []
    for method in methods:
        for tier in [] if args.one_off_only else tiers:
            spec = {"family": str(family), "tier": tier, "method": method, "candidates": args.candidates}
            spec["dtype"] = args.dtype
            r = worker(spec | {"cold": args.cold})
            results.append(r)
            print(
                f"{method:16s} {tier:6s} first {r['first_merge_s']:7.2f} s  per candidate {r['merge_s']:6.2f} s  "
                f"({r['merge_s'] / r['copy_s']:.1f}x a copy of the live model, {r['copy_s']:.2f} s)  "
                f"peak RSS {r['peak_rss'] / GiB:5.2f} GiB (planned {r['predicted'] / GiB:.2f})  "
                f"read {r['read_per_candidate'] / GiB:.2f} GiB per candidate",
                flush=True,
            )
    paths = []
    with tempfile.TemporaryDirectory(dir=family.parent) as tmp:
        for method in [] if args.no_one_off else methods:
            p = mergenetic_path(method, family, Path(tmp), args.dtype)
            paths.append(p)
            print(
                f"{method:16s} mergekit-yaml {p['mergekit_yaml_s']:6.1f} s "
                f"(peak {p['mergekit_yaml_peak'] / GiB:.2f} GiB)"
                f" + from_pretrained {p['from_pretrained_s']:.1f} s | evomerge merge {p['evomerge_merge_s']:6.1f} s "
                f"(peak {p['evomerge_merge_peak'] / GiB:.2f} GiB; {p['differ_fraction']:.4%} of entries differ)",
                flush=True,
            )
    live = results[0]["live_bytes"] if results else 0
    params = results[0]["params"] if results else 0
    summary = {"bench": "scale", "params": params, "live_gib": round(live / GiB, 3), "tiers": {}, "one_off": {}}
    summary["one_off_dtype"] = args.dtype
    for r in results:
        p = next((p for p in paths if p["method"] == r["method"]), None)
        summary["tiers"][f"{r['method']}:{r['tier']}"] = {
            "merge_s": r["merge_s"],
            "first_merge_s": r["first_merge_s"],
            "vs_copy": round(r["merge_s"] / r["copy_s"], 2),
            "peak_gib": round(r["peak_rss"] / GiB, 2),
            "speedup_vs_mergenetic": round(p["mergenetic_s"] / r["merge_s"], 1) if p else None,
            "planned_gib": round(r["predicted"] / GiB, 2),  # the memory model's figure, headroom included
            "read_gib": round(r["read_per_candidate"] / GiB, 3),
        }
    for r in results:  # the hybrid tier against the disk tier, same method (the reference in this run)
        disk = next((d for d in results if d["tier"] == "disk" and d["method"] == r["method"]), None)
        if r["tier"] == "hybrid" and disk is not None:
            summary["tiers"][f"{r['method']}:hybrid"] |= {
                "read_vs_disk": round(r["read_per_candidate"] / disk["read_per_candidate"], 3),
                "time_vs_disk": round(r["merge_s"] / disk["merge_s"], 3),
                "peak_within_budget": r["peak_rss"] <= r["budget"],
            }
    for p in paths:
        summary["one_off"][p["method"]] = {
            "evomerge_s": p["evomerge_merge_s"],
            "mergekit_s": p["mergekit_yaml_s"],
            "time_ratio": round(p["evomerge_merge_s"] / p["mergekit_yaml_s"], 2),
            "evomerge_peak_gib": round(p["evomerge_merge_peak"] / GiB, 2),
            "mergekit_peak_gib": round(p["mergekit_yaml_peak"] / GiB, 2),
            "peak_ratio": round(p["evomerge_merge_peak"] / p["mergekit_yaml_peak"], 2),
            "differ_fraction": p["differ_fraction"],  # entries unlike mergekit-yaml's (stock sorts)
        }
    host_limit = live + 4 * params * 2 + GiB
    disk_limit = live + 1.5 * GiB
    checks = {
        "host_peak_ok": all(r["peak_rss"] <= host_limit for r in results if r["tier"] in ("host", "device")),
        "disk_peak_ok": all(r["peak_rss"] <= disk_limit for r in results if r["tier"] == "disk"),
        "hybrid_half_the_reads_ok": all(
            0.4 <= v["read_vs_disk"] <= 0.6 for k, v in summary["tiers"].items() if "read_vs_disk" in v
        ),
        "hybrid_time_ok": all(v["time_vs_disk"] <= 0.6 for k, v in summary["tiers"].items() if "time_vs_disk" in v),
        "hybrid_peak_ok": all(v["peak_within_budget"] for k, v in summary["tiers"].items() if "time_vs_disk" in v),
        "one_off_peak_ok": all(v["peak_ratio"] <= 1.5 for v in summary["one_off"].values()),
        "one_off_time_ok": all(v["time_ratio"] <= 1.5 for v in summary["one_off"].values()),
        "one_off_at_most_mergekit_ok": all(  # time and memory, as mergekit-yaml's at most
            v["time_ratio"] <= 1.0 and v["peak_ratio"] <= 1.0 for v in summary["one_off"].values()
        ),
        "host_5x_mergenetic_ok": all(
            v["speedup_vs_mergenetic"] >= 5
            for k, v in summary["tiers"].items()
            if k.endswith(":host") and v["speedup_vs_mergenetic"] is not None  # None: no one-off ran
        ),
    }
    summary["limits_gib"] = {"host": round(host_limit / GiB, 2), "disk": round(disk_limit / GiB, 2)}
    summary["checks"] = checks
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
