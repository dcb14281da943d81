"""Score a built demo family from its saved checkpoints: every model, and the merges
its manifest records, re-merged in memory. What ``evomerge demo`` shows and what the
tests assert, so the two cannot disagree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DemoFamilyError
from ..merge.engine import Merger
from .family import is_built, load_jsonl, load_member, read_manifest, score_skills, task_arithmetic_recipe


@dataclass(frozen=True)
class Row:
    name: str
    kind: str  # "model" or "merge"
    scores: dict[str, float]  # per skill, the composed task and the skills' "average", in percent
    detail: str = ""


def score_family(family_dir: Path | str, split: str = "test") -> list[Row]:
    family_dir = Path(family_dir)
    if not is_built(family_dir):
        raise DemoFamilyError(
            f"no demo family at {family_dir}: build it with `evomerge demo-models --out {family_dir}`"
        )
    manifest = read_manifest(family_dir)
    max_new = manifest["spec"]["max_new_tokens"]
    names = [*manifest["skills"], manifest["composed_task"]]
    data = {s: load_jsonl(family_dir / manifest["tasks"][s][split]) for s in names}

    rows = []
    model = tokenizer = None
    for name in manifest["models"]:
        model, tokenizer = load_member(family_dir, name)
        rows.append(Row(name, "model", score_skills(model, tokenizer, data, max_new)))
    assert model is not None and tokenizer is not None

    for name, merge in manifest["merges"].items():
        weights = merge["weights"]
        recipe = task_arithmetic_recipe(family_dir, weights, base=merge["base"])
        Merger.for_recipe(recipe).merge_into(model, recipe)
        detail = merge["method"] + " " + ", ".join(f"{e}={w:.2g}" for e, w in weights.items())
        rows.append(Row(name, "merge", score_skills(model, tokenizer, data, max_new), detail))
    return rows
