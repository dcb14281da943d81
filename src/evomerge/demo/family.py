"""Build (or find in the cache) the demo model family.

The recipe is the one measured to make merging help: a base that has learned the easy
half of every skill, then one specialist per skill, fine-tuned briefly at a low
learning rate on that skill (with a little replay of the others, so a specialist
gains without forgetting). Each specialist then beats the base on its own skill, and
a merge that keeps every specialist's gain beats every single model on average.
See ``skills`` for why the skills have this shape.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from ..errors import DemoFamilyError
from ..evaluate.scorers import GenerationScorer
from ..evaluate.tasks import Item as TaskItem
from ..merge.engine import Merger
from ..merge.recipe import Recipe
from ..models.save import write_atomically
from .skills import SKILLS, Item, level, make_splits
from .tokenizer import build_tokenizer
from .train import Mixture, make_model, train

log = logging.getLogger(__name__)

#: Bump when anything that changes the built family changes; it keys the cache.
BUILDER_VERSION = "2"
MANIFEST = "manifest.json"
TARGET_TASK = "mix"  # every skill at once: what a merge of the specialists is for


@dataclass(frozen=True)
class FamilySpec:
    """Every knob of the build, recorded in the manifest so a family can be rebuilt."""

    seed: int = 0
    n_search: int = 300
    n_test: int = 300
    n_train: int = 10000  # per level (easy, hard)
    hard_share: float = 0.6  # of the search and test splits
    # Wide and shallow: at equal cost (~1.35M parameters, 0.16 s a step here), width left
    # room for the specialists' task vectors to add up; 128-wide/4-layer models
    # interfered in every merge tried.
    hidden: int = 256
    intermediate: int = 512
    layers: int = 2
    heads: int = 8
    batch_size: int = 64
    # Steps and rates chosen for a build under 3 minutes on 2 cores (bf16 autocast below);
    # 1000/400 steps at 2e-3/3e-4 took 7.5 minutes for the same +16-point demo search.
    base_steps: int = 400
    base_lr: float = 3e-3
    base_mix: tuple[tuple[str, float], ...] = (("text", 0.1), ("add", 0.4), ("greek", 0.25), ("cyrillic", 0.25))
    specialist_steps: int = 160
    # Multi-digit addition takes longer to learn than a letter-for-letter cipher.
    skill_steps: tuple[tuple[str, int], ...] = (("add", 320),)
    specialist_lr: float = 6e-4
    replay: float = 0.2  # share of the other skills' easy items while fine-tuning a specialist
    # Weight 0 lets the grid leave a specialist out: a merge of all three at full
    # strength interferes on this family (measured), pairs do not; the two ciphers
    # merge best at 0.75 each (75 against 65 at 1.0, on test).
    grid: tuple[float, ...] = (0.0, 0.75, 1.0)
    grid_items: int = 100  # per skill: the grid is scored on this share of the search split
    max_new_tokens: int = 24
    bf16: bool = True  # CPU bf16 autocast while training (see train.train): 1.35x a step


def cache_root() -> Path:
    return Path(os.environ.get("EVOMERGE_CACHE", Path.home() / ".cache" / "evomerge"))


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
    """Exact-match accuracy in percent per skill, plus their unweighted ``average``."""
    scores = {}
    scorer = GenerationScorer("exact", strict=True, max_new_tokens=max_new_tokens, batch_size=128)
    for skill, items in data.items():
        hits = scorer.score(model, tokenizer, as_task_items(items))
        scores[skill] = 100 * sum(hits) / len(hits)
    scores["average"] = sum(scores.values()) / len(scores)
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
    splits = {s: make_splits(s, spec.n_search, spec.n_test, spec.n_train, spec.seed, spec.hard_share) for s in SKILLS}
    tasks = _write_tasks(out, splits)
    easy = {s: level(splits[s]["train"], "easy") for s in SKILLS}
    search = {s: splits[s]["search"] for s in SKILLS}
    test = {s: splits[s]["test"] for s in SKILLS}
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

    endpoints: list[dict[str, torch.Tensor]] = []
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
            lr=spec.specialist_lr,
            batch_size=spec.batch_size,
            bf16=spec.bf16,
        )
        timings[skill] = time.perf_counter() - t0
        endpoints.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        _save(model, tokenizer, out / "models" / skill)
        log.info("specialist %s trained in %.0fs", skill, timings[skill])

    def scores() -> dict[str, dict[str, float]]:
        return {
            "search": score_skills(model, tokenizer, search, spec.max_new_tokens),
            "test": score_skills(model, tokenizer, test, spec.max_new_tokens),
        }

    models_info: dict[str, Any] = {}
    for name, state in [("base", base_state), *zip(SKILLS, endpoints, strict=True)]:
        model.load_state_dict(state)
        models_info[name] = {
            "path": f"models/{name}",
            "params": sum(p.numel() for p in model.parameters()),
            "scores": scores(),
        }
        if name != "base":
            models_info[name]["task_vector_rel_norm"] = _rel_norm(base_state, state)

    # The weight grid is searched on `search`; only the winner is scored on `test`.
    t0 = time.perf_counter()
    merger = Merger.for_recipe(task_arithmetic_recipe(out, dict.fromkeys(SKILLS, 1.0)))
    grid_items = {s: items[: spec.grid_items] for s, items in search.items()}
    grid = []
    for point in itertools.product(spec.grid, repeat=len(endpoints)):
        merger.merge_into(model, task_arithmetic_recipe(out, dict(zip(SKILLS, point, strict=True))))
        grid.append((score_skills(model, tokenizer, grid_items, spec.max_new_tokens)["average"], point))
    best_weights = max(grid, key=lambda g: g[0])[1]
    timings["grid"] = time.perf_counter() - t0

    merges: dict[str, Any] = {}
    uniform = [1.0 / len(endpoints)] * len(endpoints)
    for name, chosen in [("uniform_merge", uniform), ("best_merge", list(best_weights))]:
        merger.merge_into(model, task_arithmetic_recipe(out, dict(zip(SKILLS, chosen, strict=True))))
        merges[name] = {
            "method": "task_arithmetic",
            "base": "base",
            "weights": dict(zip(SKILLS, chosen, strict=True)),
            "scores": scores(),
        }
    merges["best_merge"]["found_on"] = (
        f"the first {spec.grid_items} search items per skill, grid {list(spec.grid)} per specialist"
    )

    timings["total"] = time.perf_counter() - t_start
    manifest = {
        "builder_version": BUILDER_VERSION,
        "spec": asdict(spec),
        "torch": torch.__version__,
        "skills": list(SKILLS),
        "target_task": TARGET_TASK,
        "tasks": tasks,
        "models": models_info,
        "merges": merges,
        "build_seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


def _write_tasks(out: Path, splits: dict[str, dict[str, list[Item]]]) -> dict[str, dict[str, str]]:
    """Write every split as JSONL, plus the target task (all skills at once); return the paths."""
    files = {(skill, split): items for skill, parts in splits.items() for split, items in parts.items()}
    for split in ("search", "test"):
        files[(TARGET_TASK, split)] = [item for parts in splits.values() for item in parts[split]]
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
