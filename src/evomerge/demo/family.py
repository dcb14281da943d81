"""Build (or find in the cache) the demo model family.

A base that has learned the easy half of every skill, then one specialist per skill,
fine-tuned briefly on that skill (with a little replay of the others, so a specialist
gains without forgetting). Each specialist then beats the base on its own skill. The
target task is the composed one (``skills.COMPOSED``: sums with carries written in Greek
numerals), which needs two specialists at once and on which no member is trained.
See ``skills`` for why the skills have this shape.

Family v3 is 6 layers deep (v2 had 2), so that layer-wise recipes and layer paths have
depth to work with; at 128 wide it costs what v2's 256-wide model did per step.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from ..cachedir import cache_root
from ..errors import DemoFamilyError
from ..evaluate.scorers import GenerationScorer
from ..evaluate.tasks import Item as TaskItem
from ..merge.engine import Merger
from ..merge.recipe import Recipe
from ..models.save import write_atomically
from .skills import COMPOSED, SKILLS, Item, level, make_splits
from .tokenizer import build_tokenizer
from .train import Mixture, make_model, train

log = logging.getLogger(__name__)

#: Bump when anything that changes the built family changes; it keys the cache.
BUILDER_VERSION = "3"
MANIFEST = "manifest.json"
TARGET_TASK = COMPOSED  # a skill no member has: what the demo evolves a merge for
MIX_TASK = "mix"  # every skill's items at once (the three skills side by side)


@dataclass(frozen=True)
class FamilySpec:
    """Every knob of the build, recorded in the manifest so a family can be rebuilt."""

    seed: int = 0
    n_search: int = 300
    n_test: int = 300
    n_train: int = 10000  # per level (easy, hard)
    hard_share: float = 0.6  # of the search and test splits
    # Deep and narrow: 6 layers of 128 (~1.3M parameters, as v2's 2 layers of 256), about
    # 0.2 s a step here in fp32 (bf16 autocast is slower than fp32 at this width).
    hidden: int = 128
    intermediate: int = 384
    layers: int = 6
    heads: int = 8
    batch_size: int = 64
    base_steps: int = 520
    base_lr: float = 3e-3
    base_mix: tuple[tuple[str, float], ...] = (("text", 0.05), ("add", 0.3), ("greek", 0.45), ("cyrillic", 0.2))
    specialist_steps: int = 160
    # Carries take longer to learn than a letter-for-letter cipher, and a higher rate.
    skill_steps: tuple[tuple[str, int], ...] = (("add", 260), ("cyrillic", 120))
    specialist_lr: float = 1e-3
    skill_lr: tuple[tuple[str, float], ...] = (("add", 2e-3),)
    replay: float = 0.2  # share of the other skills' easy items while fine-tuning a specialist
    # The manifest's fixed merges: task arithmetic of the math and Greek specialists on
    # this grid, the best on the composed task's first grid_items search items (ties
    # broken by the two specialists' own skills on as many items).
    grid: tuple[float, ...] = (0.5, 0.75, 1.0)
    grid_items: int = 100
    max_new_tokens: int = 24
    bf16: bool = False


def default_family_dir() -> Path:
    """``$EVOMERGE_DEMO_DIR``, else ``$EVOMERGE_CACHE/demo-<version>`` (``~/.cache/evomerge``)."""
    env = os.environ.get("EVOMERGE_DEMO_DIR")
    return Path(env) if env else cache_root() / f"demo-{BUILDER_VERSION}"


def read_manifest(family_dir: Path) -> dict[str, Any]:
    return json.loads((Path(family_dir) / MANIFEST).read_text())


def is_built(family_dir: Path) -> bool:
    try:
        return read_manifest(family_dir).get("builder_version") == BUILDER_VERSION
    except (OSError, ValueError):
        return False


def build_demo_family(out: Path | str | None = None, *, force: bool = False, spec: FamilySpec | None = None) -> Path:
    """Return the directory of a built demo family, building it first if absent.

    The build goes to a temporary sibling directory that is renamed into place at
    the end, so an interrupted build never leaves a half family that looks finished.
    """
    target = Path(out) if out is not None else default_family_dir()
    if not force and is_built(target):
        return target
    # Two processes asking at once (parallel tests, a run beside `evomerge demo-models`): the
    # second waits for the first's family rather than building its own and replacing the
    # folder the first is reading. The lock lives in the temp folder, not beside the family.
    key = hashlib.sha256(str(target.expanduser().resolve()).encode()).hexdigest()[:16]
    with FileLock(Path(tempfile.gettempdir()) / f"evomerge-demo-build-{key}.lock"):
        if not force and is_built(target):
            return target
        if target.exists() and any(target.iterdir()) and not (target / MANIFEST).exists():
            raise DemoFamilyError(
                f"{target} exists and holds something other than a demo family; refusing to overwrite it. "
                "Choose another --out, or empty that directory."
            )
        return write_atomically(target, lambda tmp: _build(tmp, spec or FamilySpec()), force=True)


def _write_jsonl(path: Path, items: list[Item]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")


def load_jsonl(path: Path | str) -> list[Item]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def score_skills(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: dict[str, list[Item]], max_new_tokens: int
) -> dict[str, float]:
    """Exact-match accuracy in percent per task, plus the unweighted ``average`` of the
    skills among them (the composed task is not one of them: it is reported on its own)."""
    scores = {}
    scorer = GenerationScorer("exact", strict=True, max_new_tokens=max_new_tokens, batch_size=128)
    for skill, items in data.items():
        hits = scorer.score(model, tokenizer, as_task_items(items))
        scores[skill] = 100 * sum(hits) / len(hits)
    skills = [scores[s] for s in SKILLS if s in scores]
    if skills:
        scores["average"] = sum(skills) / len(skills)
    return {k: round(v, 2) for k, v in scores.items()}


def as_task_items(items: list[Item]) -> list[TaskItem]:
    """Demo items (dicts with skill and level) as evaluation items."""
    return [TaskItem(str(i), it["question"], answer=it["answer"], meta=dict(it)) for i, it in enumerate(items)]


def _rel_norm(base: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> float:
    num = sum(float((other[k] - base[k]).float().pow(2).sum()) for k in base)
    den = sum(float(base[k].float().pow(2).sum()) for k in base)
    return round((num / den) ** 0.5, 4)


def _build(out: Path, spec: FamilySpec) -> None:
    t_start = time.perf_counter()
    tokenizer = build_tokenizer()
    tasks_splits = {
        s: make_splits(s, spec.n_search, spec.n_test, spec.n_train, spec.seed, spec.hard_share)
        for s in (*SKILLS, COMPOSED)
    }
    splits = {s: tasks_splits[s] for s in SKILLS}
    tasks = _write_tasks(out, tasks_splits)
    easy = {s: level(splits[s]["train"], "easy") for s in SKILLS}
    test = {s: tasks_splits[s]["test"] for s in (*SKILLS, COMPOSED)}
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    model = make_model(
        tokenizer, spec.seed, hidden=spec.hidden, intermediate=spec.intermediate, layers=spec.layers, heads=spec.heads
    )
    train(
        model,
        Mixture(tokenizer, easy, dict(spec.base_mix), spec.seed + 1),
        spec.base_steps,
        lr=spec.base_lr,
        batch_size=spec.batch_size,
        warmup=50,
        bf16=spec.bf16,
    )
    timings["base"] = time.perf_counter() - t0
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    _save(model, tokenizer, out / "models" / "base")
    log.info("base trained in %.0fs", timings["base"])

    endpoints: dict[str, dict[str, torch.Tensor]] = {}
    for i, skill in enumerate(SKILLS):
        t0 = time.perf_counter()
        model.load_state_dict(base_state)
        others = [o for o in SKILLS if o != skill]
        items = {skill: splits[skill]["train"], **{o: easy[o] for o in others}}
        weights = {skill: 1.0 - spec.replay, **{o: spec.replay / len(others) for o in others}}
        train(
            model,
            Mixture(tokenizer, items, weights, spec.seed + 100 + i),
            dict(spec.skill_steps).get(skill, spec.specialist_steps),
            lr=dict(spec.skill_lr).get(skill, spec.specialist_lr),
            batch_size=spec.batch_size,
            bf16=spec.bf16,
        )
        timings[skill] = time.perf_counter() - t0
        endpoints[skill] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        _save(model, tokenizer, out / "models" / skill)
        log.info("specialist %s trained in %.0fs", skill, timings[skill])

    # Scored on test only: the search split is the experiments' (a build is timed).
    models_info: dict[str, Any] = {}
    for name, state in [("base", base_state), *endpoints.items()]:
        model.load_state_dict(state)
        models_info[name] = {
            "path": f"models/{name}",
            "params": sum(p.numel() for p in model.parameters()),
            "scores": {"test": score_skills(model, tokenizer, test, spec.max_new_tokens)},
        }
        if name != "base":
            models_info[name]["task_vector_rel_norm"] = _rel_norm(base_state, state)

    # Fixed weights for the two specialists the composed task needs, chosen on search items.
    t0 = time.perf_counter()
    pair = ("add", "greek")
    rest = {s: 0.0 for s in SKILLS if s not in pair}
    merger = Merger.for_recipe(task_arithmetic_recipe(out, dict.fromkeys(SKILLS, 1.0)))
    grid_items = {t: tasks_splits[t]["search"][: spec.grid_items] for t in (COMPOSED, *pair)}
    grid = []
    for point in itertools.product(spec.grid, repeat=len(pair)):
        merger.merge_into(model, task_arithmetic_recipe(out, {**dict(zip(pair, point, strict=True)), **rest}))
        scores = score_skills(model, tokenizer, grid_items, spec.max_new_tokens)
        grid.append(((scores[COMPOSED], scores["average"]), point))
    best_weights = max(grid, key=lambda g: g[0])[1]
    timings["grid"] = time.perf_counter() - t0

    merges: dict[str, Any] = {}
    uniform = dict.fromkeys(SKILLS, round(1.0 / len(SKILLS), 6))
    best = {**dict(zip(pair, best_weights, strict=True)), **rest}
    for name, chosen in [("uniform_merge", uniform), ("best_merge", best)]:
        merger.merge_into(model, task_arithmetic_recipe(out, chosen))
        merges[name] = {
            "method": "task_arithmetic",
            "base": "base",
            "weights": chosen,
            "scores": {"test": score_skills(model, tokenizer, test, spec.max_new_tokens)},
        }
    merges["best_merge"]["found_on"] = (
        f"the first {spec.grid_items} search items of {COMPOSED} (then of {' and '.join(pair)}), "
        f"grid {list(spec.grid)} for {' and '.join(pair)}"
    )

    timings["total"] = time.perf_counter() - t_start
    manifest = {
        "builder_version": BUILDER_VERSION,
        "spec": asdict(spec),
        "torch": torch.__version__,
        "skills": list(SKILLS),
        "composed_task": COMPOSED,
        "target_task": TARGET_TASK,
        "tasks": tasks,
        "models": models_info,
        "merges": merges,
        "build_seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


def _write_tasks(out: Path, splits: dict[str, dict[str, list[Item]]]) -> dict[str, dict[str, str]]:
    """Write every split as JSONL, plus ``mix`` (every skill's items at once); return the paths."""
    files = {(skill, split): items for skill, parts in splits.items() for split, items in parts.items()}
    for split in ("search", "test"):
        files[(MIX_TASK, split)] = [item for s in SKILLS for item in splits[s][split]]
    tasks: dict[str, dict[str, str]] = {}
    for (task, split), items in files.items():
        rel = f"data/{task}/{split}.jsonl"
        _write_jsonl(out / rel, items)
        tasks.setdefault(task, {})[split] = rel
    return tasks


@contextlib.contextmanager
def _quiet_hf() -> Iterator[None]:
    """Progress bars for a one-shard, 5 MB checkpoint are noise in the demo's output."""
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def _save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: Path) -> None:
    with _quiet_hf():
        model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def task_arithmetic_recipe(family_dir: Path | str, weights: dict[str, float], base: str = "base") -> Recipe:
    """The family's merges: task arithmetic over its saved checkpoints."""
    models = Path(family_dir) / "models"
    return Recipe.from_params(
        "task_arithmetic",
        [str(models / name) for name in weights],
        {"weight": [float(w) for w in weights.values()]},
        base_model=str(models / base),
    )


def load_member(family_dir: Path | str, name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load one model of a built family with the ordinary Auto classes."""
    path = Path(family_dir) / "models" / name
    with _quiet_hf():
        return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
