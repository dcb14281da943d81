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

What happens around the loop (storing, logging, the progress bar, and later a GUI or a
Ray dashboard) is a ``Callback`` (pymoo's habit): the loop calls ``on_evaluation`` as
each candidate finishes and ``on_generation`` after each tell, and knows nothing else
of its watchers. The store's writer always runs first, so a watcher that fails loses
no evaluation.

A candidate that raises (``Evaluation.error``) is stored as FAIL. With
``on_error="stop"`` the run then stops with a ``CandidateFailedError``, and a resume
evaluates that candidate again; with ``"skip"`` the algorithm is told the worst value
(``FAILED_F`` per objective) and the search goes on.
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
from ..merge.candidate import Candidate
from .local_executor import Executor
from .problem import Evaluation, MergeProblem
from .store import EvaluationRow, GenerationRow, RunStore

log = logging.getLogger(__name__)
#: pymoo wants an n_gen termination; without a generation budget the loop's own checks stop it.
_NO_LIMIT = 10**9
#: What the algorithm is told of a skipped (failed) candidate, per objective, minimised.
FAILED_F = 1e30


class ReplayError(EvomergeError):
    """A resumed run that does not retrace its stored generations."""


class CandidateFailedError(EvomergeError):
    """A candidate raised and ``search.on_error`` is ``stop``."""


@dataclass(frozen=True)
class Evaluated:
    """One finished candidate, as callbacks see it."""

    generation: int
    position: int  # in the generation's ask
    digest: str
    x: np.ndarray
    recipe: Candidate
    evaluation: Evaluation


class Callback:
    """Watches a search. Override what you need; every method does nothing here."""

    def on_start(self, searcher: Searcher, replayed: int) -> None:
        """Before the first ask; ``replayed``: stored generations a resume will replay."""

    def on_evaluation(self, searcher: Searcher, done: Evaluated) -> None:
        """After each candidate is merged and scored (replayed ones are not reported)."""

    def on_generation(self, searcher: Searcher, row: GenerationRow, replayed: bool) -> None:
        """After each tell."""

    def on_end(self, searcher: Searcher, reason: str) -> None:
        """When the search stops, with why."""


class StoreWriter(Callback):
    """Commits each evaluation and generation to the run store as it finishes."""

    def __init__(self, store: RunStore) -> None:
        self.store = store

    def on_evaluation(self, searcher: Searcher, done: Evaluated) -> None:
        e, m = done.evaluation, done.evaluation.measurement
        self.store.add_evaluation(
            done.generation,
            done.digest,
            done.x,
            searcher.problem.space.values(done.x),
            done.recipe.to_yaml(),
            m.values if m is not None else [],
            m.items if m is not None else {},
            e.merge_s,
            e.eval_s,
            error=e.error,
            position=done.position,
        )

    def on_generation(self, searcher: Searcher, row: GenerationRow, replayed: bool) -> None:
        if not replayed:
            self.store.add_generation(row)

    def on_end(self, searcher: Searcher, reason: str) -> None:
        self.store.set("stop_reason", reason)


class LogWriter(Callback):
    """The run's log lines: resume, each generation, failures, the stop."""

    def on_start(self, searcher: Searcher, replayed: int) -> None:
        if replayed:
            log.info("resuming: replaying %d stored generations", replayed)

    def on_evaluation(self, searcher: Searcher, done: Evaluated) -> None:
        if done.evaluation.error is not None:
            log.warning("candidate %s failed: %s", done.digest[:12], done.evaluation.error)

    def on_generation(self, searcher: Searcher, row: GenerationRow, replayed: bool) -> None:
        if not replayed:
            log.info("generation %d: %d evaluations in all, best %s", row.generation, row.evaluations, row.best["best"])

    def on_end(self, searcher: Searcher, reason: str) -> None:
        log.info("search stopped: %s", reason)


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
        on_error: str = "stop",
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.problem, self.algorithm, self.executor, self.store = problem, algorithm, executor, store
        self.termination, self.seed, self.on_error = termination, seed, on_error
        self.callbacks: list[Callback] = [StoreWriter(store), LogWriter(), *callbacks]
        if progress:
            self.callbacks.append(ProgressBar(termination, problem.maximize))

    def _emit(self, event: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    def run(self) -> str:
        """Search until a termination criterion holds; return why it stopped."""
        np.random.seed(self.seed)
        pymoo_problem = self.problem.pymoo_problem()
        self.algorithm.setup(
            pymoo_problem, termination=("n_gen", self.termination.generations or _NO_LIMIT), seed=self.seed
        )
        stored = self.store.generations()
        history: list[GenerationRow] = []
        seen: dict[str, np.ndarray] = {}  # digest -> F of every candidate so far, replayed ones included
        self._emit("on_start", len(stored))
        try:
            while (reason := self.termination.reason(history)) is None:
                if not self.algorithm.has_next():
                    reason = "the algorithm converged"
                    break
                gen = len(history)
                replay = stored[gen] if gen < len(stored) else None
                row = self._generation(gen, replay, pymoo_problem, seen, history)
                history.append(row)
                self._emit("on_generation", row, replay is not None)
        finally:
            for callback in self.callbacks:
                close = getattr(callback, "close", None)
                if close is not None:
                    close()
        self._emit("on_end", reason)
        return reason

    def _generation(
        self,
        gen: int,
        replay: GenerationRow | None,
        pymoo_problem: Any,
        seen: dict[str, np.ndarray],
        history: list[GenerationRow],
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
        known = self.store.objectives_of(digests, failed=self.on_error == "skip")
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
            self._emit("on_evaluation", Evaluated(gen, i, digests[i], xs[i], recipes[i], evaluation))
            if evaluation.error is not None and self.on_error == "stop":
                raise CandidateFailedError(
                    f"candidate {digests[i][:12]} (generation {gen}) failed: {evaluation.error}. It is stored as "
                    "FAIL in evaluations.csv; `evomerge resume` tries it again, and search.on_error: skip goes on "
                    "without failed candidates."
                )
            known[digests[i]] = None if evaluation.measurement is None else list(evaluation.measurement.values)
            mark = time.perf_counter()
            seconds["store"] += mark - stored_at

        tell_start = time.perf_counter()
        f = np.array([self._f(known[d]) for d in digests])
        Evaluator(skip_already_evaluated=False).eval(StaticProblem(pymoo_problem, F=f), pop)
        self.algorithm.tell(infills=asked)
        # First seen in this generation (evaluated now, or before a kill in this generation); not failed ones.
        new = {d: self._f(known[d]) for d in digests if d not in seen and known[d] is not None}
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
        return row

    def _f(self, values: Sequence[float] | None) -> np.ndarray:
        """pymoo's ``F`` of a candidate; a failed one is the worst there is."""
        return np.full(self.problem.n_obj, FAILED_F) if values is None else self.problem.minimized(values)

    def _summary(
        self, known: dict[str, list[float] | None], digests: list[str], seen_f: list[np.ndarray], improved: bool
    ) -> dict[str, Any]:
        """Best so far and this generation's mean, per objective, in natural units (failed
        candidates left out; None where every candidate so far failed)."""
        signs = np.array([-1.0 if up else 1.0 for up in self.problem.maximize])
        if not seen_f:
            return {"best": [None] * self.problem.n_obj, "mean": [None] * self.problem.n_obj, "front": 0,
                    "improved": improved}  # fmt: skip
        all_f = np.array(seen_f)
        best = (signs * all_f.min(axis=0)).tolist()
        scored = [known[d] for d in digests if known[d] is not None]
        mean = np.array(scored, dtype=float).mean(axis=0).tolist() if scored else [None] * self.problem.n_obj
        on_front = NonDominatedSorting().do(all_f, only_non_dominated_front=True) if self.problem.n_obj > 1 else [0]
        front = len({tuple(all_f[i]) for i in on_front})  # its points, as winners() counts them
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
    over every evaluation (several objectives), each point of it once: recipes that score
    the same are one member (the earliest), so ``pareto:K`` names one point."""
    if not rows:
        return []
    signs = np.array([-1.0 if up else 1.0 for up in maximize])
    f = np.array([r.objectives for r in rows], dtype=float) * signs
    if len(maximize) == 1:
        return [rows[int(np.argmin(f[:, 0]))]]
    front = NonDominatedSorting().do(f, only_non_dominated_front=True)
    first: dict[tuple[float, ...], EvaluationRow] = {}  # recipes with equal scores: one point, the earliest
    for i in sorted(front):
        first.setdefault(tuple(f[i]), rows[i])
    return list(first.values())


class ProgressBar(Callback):
    """A rich progress bar: generations, evaluations, best so far, ETA."""

    def __init__(self, termination: Termination, maximize: Sequence[bool]) -> None:
        self.termination = termination
        self.signs = np.array([-1.0 if up else 1.0 for up in maximize])
        self.evaluations = 0
        self.best_f: np.ndarray | None = None  # per objective, minimised
        self.gen = 0
        self.bar: Any = None

    def on_start(self, searcher: Searcher, replayed: int) -> None:
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

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def _text(self) -> str:
        best = "-" if self.best_f is None else ", ".join(f"{v:.4g}" for v in self.signs * self.best_f)
        return f"generation {self.gen} | {self.evaluations} evaluations | best {best}"

    def on_evaluation(self, searcher: Searcher, done: Evaluated) -> None:
        self.evaluations += 1
        m = done.evaluation.measurement
        if m is not None:
            f = searcher.problem.minimized(m.values)
            self.best_f = f if self.best_f is None else np.minimum(self.best_f, f)
        self.bar.update(self.task, description=self._text())

    def on_generation(self, searcher: Searcher, row: GenerationRow, replayed: bool) -> None:
        self.gen = row.generation + 1
        self.evaluations = row.evaluations
        if None not in row.best["best"]:
            self.best_f = self.signs * np.array(row.best["best"])
        self.bar.update(self.task, advance=1, description=self._text())
