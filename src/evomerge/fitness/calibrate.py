"""How far each estimator can be trusted, measured on the run's own models.

Random merges of the endpoints (not the IRT respondents) are scored on the whole
search split; each estimator, at several anchor counts and several anchor seeds,
then estimates those scores from the anchors alone. The table reports the mean
absolute error against the full score, the Spearman rank correlation across the
merges (a search only needs the ranking right), and the items evaluated per
candidate: what a run pays for each estimator.

The respondents are scored on every item; with ``fitness.respondent_items`` below 1 the
IRT estimators are measured twice, fitted on every score and on the items a run would
score (``respondent_parts``: the others hidden, as the run would never have them): the
fidelity the cheaper respondents cost.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from ..config import ExperimentConfig, FitnessConfig
from ..evaluate.evaluator import evaluator_for
from ..evaluate.generation import use_engine
from ..merge.engine import Merger
from ..merge.run import load_live_model, load_live_tokenizer
from ..models.pool import ModelPool
from ..threads import one_blas_thread
from .anchors import SELECTIONS
from .build import build_estimator, item_strata, random_merges, run_respondents, scoring_context
from .estimators import ESTIMATORS, Mean
from .fits import IRTFits
from .respondents import Respondent, collect_responses, respondent_parts, respondents_file, shared_cache_dir

log = logging.getLogger(__name__)


def default_variants() -> tuple[tuple[str, str], ...]:
    """(estimator, anchor selection) pairs compared by default: each registered estimator
    with the selections it declares (``Estimator.calibrate_with``)."""
    return tuple((name, sel) for name, cls in ESTIMATORS.items() for sel in cls.calibrate_with)


#: Random subsampling: what the IRT estimators are measured against.
BASELINE = (Mean.name, "random")
#: Default anchor counts, as shares of the search split.
SHARES = (0.025, 0.05, 0.1)


@dataclass(frozen=True)
class CalibrationRow:
    task: str
    estimator: str
    selection: str
    respondent_items: float  # the share of the items each respondent was scored on
    anchors: int  # asked for
    items: float  # evaluated per candidate (k-means can give fewer distinct anchors)
    mae: float  # mean over anchor seeds, in score units (accuracy 0..1)
    mae_std: float
    spearman: float
    spearman_std: float

    @property
    def uses_irt(self) -> bool:
        return ESTIMATORS[self.estimator].uses_irt


@one_blas_thread()
def calibrate(
    config: ExperimentConfig,
    out: Path | str,
    *,
    merges: int = 30,
    anchor_counts: Sequence[int] | None = None,
    repeats: int = 5,
    variants: Sequence[tuple[str, str]] | None = None,
    device: str = "cpu",
) -> list[CalibrationRow]:
    """Write ``calibration.csv``, ``calibration.json`` and ``calibration.png`` to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    m, f = config.models, config.fitness
    base = m.base or m.endpoints[0]
    merger = Merger(
        ModelPool.open(
            base,
            [e for e in [*m.endpoints, *f.checkpoints] if e != base],
            allow_pickle=m.allow_pickle,
            revision=m.revision,
            trust_remote_code=m.trust_remote_code,
        ),
        device=device,
        tier=config.merge.tier,
        memory_budget=config.merge.memory_budget,
    )
    model = load_live_model(merger)
    use_engine(model, config.output.generation)
    tokenizer = load_live_tokenizer(merger)

    respondents = run_respondents(config)
    sample, rng = random_merges(config), np.random.default_rng([f.seed, 1])  # a stream apart from the respondents'
    trials = [Respondent(f"merge:{i}", "extra", sample(rng)) for i in range(merges)]
    seen = {r.recipe.digest for r in respondents}
    if any(t.recipe.digest in seen for t in trials):
        raise AssertionError("a calibration merge is also an IRT respondent")

    rows: list[CalibrationRow] = []
    report: dict = {"merges": merges, "repeats": repeats, "respondents": [r.name for r in respondents], "tasks": {}}
    for task in config.tasks:
        evaluator = evaluator_for(task)
        n = len(evaluator.splits.search)
        responses = collect_responses(
            evaluator,
            model,
            tokenizer,
            merger,
            respondents,
            cache=out / respondents_file(task.name),  # named as in a run directory
            shared=shared_cache_dir() if f.reuse_respondents else None,
            context=scoring_context(config, model),
        )
        truth_rows = collect_responses(
            evaluator, model, tokenizer, merger, trials, cache=out / f"calibration-merges-{task.name}.json"
        ).scores
        truth = truth_rows.mean(axis=1)
        strata = item_strata(f, evaluator)
        counts = sorted(set(anchor_counts or [max(5, round(s * n)) for s in SHARES]))
        for share in dict.fromkeys((1.0, f.respondent_items)):
            # each respondent's part of the items, the rest hidden: what a run at this share has
            parts = respondent_parts(responses.respondents, n, share, f.seed)
            fits = IRTFits(responses.only(parts), f.dim, seed=f.seed)
            for k in counts:
                for estimator, selection in variants or default_variants():
                    if (
                        share < 1
                        and not ESTIMATORS[estimator].uses_irt
                        and not SELECTIONS[selection].needs_respondents(strata is not None)
                    ):
                        continue  # the respondents play no part: the row at share 1 is this one
                    rows.append(
                        _measure(task.name, estimator, selection, share, k, repeats, f, fits, strata, truth_rows, truth)
                    )
                    log.info("%s", rows[-1])
        report["tasks"][task.name] = {
            "search_items": n,
            "full_scores": {"min": float(truth.min()), "max": float(truth.max()), "mean": float(truth.mean())},
            "summary": summarize([r for r in rows if r.task == task.name]),
        }
    report["seconds"] = round(time.perf_counter() - started, 1)
    _write(out, rows, report)
    return rows


def _measure(
    task: str,
    estimator: str,
    selection: str,
    share: float,
    k: int,
    repeats: int,
    f: FitnessConfig,
    fits: IRTFits,
    strata: Sequence[str] | None,
    truth_rows: np.ndarray,
    truth: np.ndarray,
) -> CalibrationRow:
    maes, rhos, items = [], [], []
    for r in range(repeats):
        spec = f.model_copy(update={"estimator": estimator, "selection": selection, "anchors": k, "seed": f.seed + r})
        est = build_estimator(spec, truth_rows.shape[1], fits=fits, strata=strata)
        estimates = np.array([est.estimate(row[est.anchors.index]) for row in truth_rows])
        maes.append(float(np.abs(estimates - truth).mean()))
        rho = spearmanr(estimates, truth).statistic if np.ptp(estimates) > 0 else 0.0
        rhos.append(float(rho))
        items.append(len(est.anchors))
    return CalibrationRow(
        task, estimator, selection, share, k, float(np.mean(items)), float(np.mean(maes)), float(np.std(maes)),
        float(np.mean(rhos)), float(np.std(rhos)),
    )  # fmt: skip


def summarize(rows: Sequence[CalibrationRow]) -> list[dict]:
    """Per share of items the respondents were scored on and anchor count: random
    subsampling (which needs no respondents) against the best IRT estimator."""
    summary = []
    for share, k in sorted({(r.respondent_items, r.anchors) for r in rows}, key=lambda sk: (-sk[0], sk[1])):
        at_k = [r for r in rows if r.anchors == k]
        baseline = next((r for r in at_k if (r.estimator, r.selection) == BASELINE), None)
        irt = [r for r in at_k if r.uses_irt and r.respondent_items == share]
        if baseline is None or not irt:
            continue
        best = min(irt, key=lambda r: r.mae)
        summary.append(
            {
                "respondent_items": share,
                "anchors": k,
                "random_mae": baseline.mae,
                "random_spearman": baseline.spearman,
                "best_irt": f"{best.estimator}/{best.selection}",
                "best_irt_mae": best.mae,
                "best_irt_spearman": best.spearman,
                "irt_beats_random": best.mae < baseline.mae,
            }
        )
    return summary


def _write(out: Path, rows: Sequence[CalibrationRow], report: dict) -> None:
    with (out / "calibration.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    report["rows"] = [asdict(r) for r in rows]
    (out / "calibration.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(rows, out / "calibration.png")


def plot(rows: Sequence[CalibrationRow], path: Path) -> None:
    """MAE and Spearman against items evaluated per candidate, one line per estimator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r.task for r in rows})
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 4 * len(tasks)), squeeze=False)
    for (ax_mae, ax_rho), task in zip(axes, tasks, strict=True):
        for est, sel, share in dict.fromkeys(
            (r.estimator, r.selection, r.respondent_items) for r in rows if r.task == task
        ):
            line = sorted(
                (r for r in rows if (r.task, r.estimator, r.selection, r.respondent_items) == (task, est, sel, share)),
                key=lambda r: r.items,
            )
            style = ("-" if share == 1 else "-.") if ESTIMATORS[est].uses_irt else "--"
            label = f"{est} ({sel})" if share == 1 else f"{est} ({sel}), respondents on {share:g} of the items"
            ax_mae.errorbar([r.items for r in line], [100 * r.mae for r in line], [100 * r.mae_std for r in line],
                            linestyle=style, marker="o", capsize=3, label=label)  # fmt: skip
            ax_rho.plot([r.items for r in line], [r.spearman for r in line], style, marker="o", label=label)
        ax_mae.set(title=f"{task}: error of the estimate", xlabel="items evaluated per candidate",
                   ylabel="mean absolute error (points)")  # fmt: skip
        lowest = min(r.spearman for r in rows if r.task == task)
        ax_rho.set(title=f"{task}: ranking of the merges", xlabel="items evaluated per candidate",
                   ylabel="Spearman with full evaluation", ylim=(min(0.7, lowest - 0.05), 1.01))  # fmt: skip
        ax_rho.axhline(0.8, color="grey", linewidth=0.8, linestyle=":")
        ax_mae.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
