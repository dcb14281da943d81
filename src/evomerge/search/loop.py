"""The search loop: pymoo through ask/tell, every evaluation stored as it finishes.

Resume is a replay. Not every pymoo algorithm can be pickled (GA's and NSGA-III's
random-state decorators are local functions, Nelder-Mead and MOEA/D hold generators),
so instead of restoring a pickled algorithm, a resumed run builds the algorithm again
from its seed and replays the stored generations: each ask is answered from the store
(a recipe evaluated before is never evaluated again), and each generation's asked
recipes must equal the stored ones, or the replay stops with an error rather than
continue a different run. Once past the stored generations, the run goes on exactly
as the uninterrupted run would have. Replaying costs the algorithm's own ask/tell
time, not a single merge or forward pass.

The global numpy generator is seeded at the start, because some algorithms' helpers
(the ``cma`` package behind CMAES) still draw from it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymoo.core.evaluator import Evaluator
from pymoo.core.individual import Individual
from pymoo.core.population import Population
from pymoo.problems.static import StaticProblem
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from ..errors import EvomergeError
from .executors import Executor
from .problem import MergeProblem
from .store import EvaluationRow, GenerationRow, RunStore

log = logging.getLogger(__name__)
#: pymoo wants an n_gen termination; without a generation budget the loop's own checks stop it.
_NO_LIMIT = 10**9


class ReplayError(EvomergeError):
    """A resumed run that does not retrace its stored generations."""


@dataclass(frozen=True)
class Termination:
    """When the search stops; each is checked between generations (a generation in
    flight is finished, so ``max_evaluations`` can be passed by up to one generation)."""

    generations: int | None = None
    max_evaluations: int | None = None
    max_seconds: float | None = None
    patience: int | None = None  # generations without improvement

    def __post_init__(self) -> None:
        if self.generations is None and self.max_evaluations is None and self.max_seconds is None:
            raise EvomergeError("a search needs a budget: generations, max_evaluations or max_seconds")

    def reason(self, history: Sequence[GenerationRow]) -> str | None:
        if not history:
            return None
        last = history[-1]
        if self.generations is not None and len(history) >= self.generations:
            return f"{self.generations} generations"
        if self.max_evaluations is not None and last.evaluations >= self.max_evaluations:
            return f"{last.evaluations} evaluations (max_evaluations {self.max_evaluations})"
        if self.max_seconds is not None and last.elapsed_s >= self.max_seconds:
            return f"{last.elapsed_s:.0f}s (max_seconds {self.max_seconds:g})"
        recent = history[-self.patience :] if self.patience is not None else []
        if len(history) > len(recent) > 0 and not any(g.best["improved"] for g in recent):
            return f"no improvement in {self.patience} generations"
        return None


class Searcher:
    def __init__(
        self,
        problem: MergeProblem,
        algorithm: Any,
        executor: Executor,
        store: RunStore,
        termination: Termination,
        *,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        self.problem, self.algorithm, self.executor, self.store = problem, algorithm, executor, store
        self.termination, self.seed, self.progress = termination, seed, progress

    def run(self) -> str:
        """Search until a termination criterion holds; return why it stopped."""
        np.random.seed(self.seed)
        pymoo_problem = self.problem.pymoo_problem()
        self.algorithm.setup(
            pymoo_problem, termination=("n_gen", self.termination.generations or _NO_LIMIT), seed=self.seed
        )
        stored = self.store.generations()
        if stored:
            log.info("resuming: replaying %d stored generations", len(stored))
        history: list[GenerationRow] = []
        seen: dict[str, np.ndarray] = {}  # digest -> F of every candidate so far, replayed ones included
        with _Progress(self.progress, self.termination, self.problem.maximize) as bar:
            while (reason := self.termination.reason(history)) is None:
                if not self.algorithm.has_next():
                    reason = "the algorithm converged"
                    break
                gen = len(history)
                replay = stored[gen] if gen < len(stored) else None
                row = self._generation(gen, replay, pymoo_problem, seen, history, bar)
                history.append(row)
                bar.generation_done(row)
        self.store.set("stop_reason", reason)
        log.info("search stopped: %s", reason)
        return reason

    def _generation(
        self,
        gen: int,
        replay: GenerationRow | None,
        pymoo_problem: Any,
        seen: dict[str, np.ndarray],
        history: list[GenerationRow],
        bar: _Progress,
    ) -> GenerationRow:
        start = time.perf_counter()
        asked = self.algorithm.ask()  # an Individual for algorithms that ask one point at a time
        pop = Population([asked]) if isinstance(asked, Individual) else asked
        xs = np.asarray(pop.get("X"), dtype=float)
        recipes = [self.problem.decode(x) for x in xs]
        digests = [r.digest for r in recipes]
        if replay is not None and replay.asked != digests:
            raise ReplayError(
                f"generation {gen} asks for other candidates than the stored run did; the run cannot be "
                "resumed with this version of evomerge/pymoo (start it again in a new run directory)"
            )
        known = self.store.objectives_of(digests)
        todo = [i for i, d in enumerate(digests) if d not in known and d not in digests[:i]]
        if replay is not None and todo:
            raise ReplayError(f"generation {gen} is stored as finished, but {len(todo)} of its candidates are not")
        seconds = dict.fromkeys(("ask", "evaluate", "merge", "eval", "store", "tell", "wall"), 0.0)
        seconds["ask"] = time.perf_counter() - start
        mark = time.perf_counter()
        for k, evaluation in self.executor.evaluate(self.problem, [recipes[i] for i in todo]):
            i = todo[k]
            stored_at = time.perf_counter()
            seconds["evaluate"] += stored_at - mark
            seconds["merge"] += evaluation.merge_s
            seconds["eval"] += evaluation.eval_s
            m = evaluation.measurement
            self.store.add_evaluation(
                gen,
                digests[i],
                xs[i],
                self.problem.space.values(xs[i]),
                recipes[i].to_yaml(),
                m.values,
                m.items,
                evaluation.merge_s,
                evaluation.eval_s,
            )
            known[digests[i]] = list(m.values)
            mark = time.perf_counter()
            seconds["store"] += mark - stored_at
            bar.evaluated(self.problem.minimized(m.values))

        tell_start = time.perf_counter()
        f = np.array([self.problem.minimized(known[d]) for d in digests])
        Evaluator(skip_already_evaluated=False).eval(StaticProblem(pymoo_problem, F=f), pop)
        self.algorithm.tell(infills=asked)
        # First seen in this generation (evaluated now, or before a kill in this generation).
        new = {d: self.problem.minimized(known[d]) for d in digests if d not in seen}
        before = np.array(list(seen.values())).reshape(-1, self.problem.n_obj)
        improved = any(not np.all(before <= p, axis=1).any() for p in new.values())  # none weakly dominates p
        seen.update(new)
        seconds["tell"] = time.perf_counter() - tell_start
        if replay is not None:
            return replay

        seconds["wall"] = wall = time.perf_counter() - start
        row = GenerationRow(
            generation=gen,
            asked=digests,
            evaluations=self.store.count(),
            state=self._state(),
            best=self._summary(known, digests, list(seen.values()), improved),
            seconds=seconds,
            elapsed_s=(history[-1].elapsed_s if history else 0.0) + wall,
        )
        self.store.add_generation(row)
        log.info(
            "generation %d: %d new evaluations (%d in all), best %s",
            gen,
            len(todo),
            row.evaluations,
            row.best["best"],
        )
        return row

    def _summary(
        self, known: dict[str, list[float]], digests: list[str], seen_f: list[np.ndarray], improved: bool
    ) -> dict[str, Any]:
        """Best so far and this generation's mean, per objective, in natural units."""
        signs = np.array([-1.0 if up else 1.0 for up in self.problem.maximize])
        all_f = np.array(seen_f)
        best = (signs * all_f.min(axis=0)).tolist()
        mean = np.array([known[d] for d in digests], dtype=float).mean(axis=0).tolist()
        front = len(NonDominatedSorting().do(all_f, only_non_dominated_front=True)) if self.problem.n_obj > 1 else 1
        return {"best": best, "mean": mean, "front": front, "improved": improved}

    def _state(self) -> dict[str, Any]:
        """What the algorithm holds after tell: its population and counters (for the
        report and for inspection; resume replays instead of restoring it)."""
        pop = getattr(self.algorithm, "pop", None)
        state: dict[str, Any] = {"n_gen": getattr(self.algorithm, "n_gen", None)}
        if pop is not None and len(pop):
            state["X"] = np.asarray(pop.get("X"), dtype=float).round(6).tolist()
            state["F"] = np.asarray(pop.get("F"), dtype=float).round(6).tolist()
        return state


def winners(rows: Sequence[EvaluationRow], maximize: Sequence[bool]) -> list[EvaluationRow]:
    """The best evaluation (one objective; the earliest on ties) or the Pareto front
    over every evaluation (several objectives), each recipe once."""
    if not rows:
        return []
    signs = np.array([-1.0 if up else 1.0 for up in maximize])
    f = np.array([r.objectives for r in rows], dtype=float) * signs
    if len(maximize) == 1:
        return [rows[int(np.argmin(f[:, 0]))]]
    front = NonDominatedSorting().do(f, only_non_dominated_front=True)
    return [rows[i] for i in sorted(front)]


class _Progress:
    """A rich progress bar (generations, evaluations, best, ETA) or nothing."""

    def __init__(self, enabled: bool, termination: Termination, maximize: Sequence[bool]) -> None:
        self.enabled, self.termination = enabled, termination
        self.signs = np.array([-1.0 if up else 1.0 for up in maximize])
        self.evaluations = 0
        self.best_f: np.ndarray | None = None  # per objective, minimised
        self.gen = 0

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} gen" if self.termination.generations else ""),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self.bar.start()
            self.task = self.bar.add_task(self._text(), total=self.termination.generations)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.stop()

    def _text(self) -> str:
        best = "-" if self.best_f is None else ", ".join(f"{v:.4g}" for v in self.signs * self.best_f)
        return f"generation {self.gen} | {self.evaluations} evaluations | best {best}"

    def evaluated(self, f: np.ndarray) -> None:
        self.evaluations += 1
        self.best_f = f if self.best_f is None else np.minimum(self.best_f, f)
        if self.enabled:
            self.bar.update(self.task, description=self._text())

    def generation_done(self, row: GenerationRow) -> None:
        self.gen = row.generation + 1
        self.evaluations = row.evaluations
        self.best_f = self.signs * np.array(row.best["best"])
        if self.enabled:
            self.bar.update(self.task, advance=1, description=self._text())
