"""Candidates merged and scored in parallel by Ray actors: every GPU of a machine, or a cluster.

Each worker is an actor that opens the pool, builds its merge cache (the tier that fits
its own device) and loads its live model once, then merges and scores the recipes sent
to it. Recipes cross the wire (a few hundred bytes), never weights. The workers score
the IRT respondents first (each respondent's per-item scores come back to the driver,
which fits IRT and picks anchors), then the problem (the search space and the prepared
objectives: items, anchors, fits) is shipped once to each of them, and the candidates
and the held-out tests follow.

The driver stays the one writer of the run store and commits each result as it comes;
the store reads rows in the order the algorithm asked for them, so a Ray run's
``evaluations.csv`` equals a local run's of the same seed, and a driver killed at any
point loses no finished evaluation. A worker that dies mid-candidate (killed, out of memory)
is replaced and its candidate sent again, up to ``search.ray.retries`` times, then the
candidate is a failed one (``Evaluation.failed``) under ``search.on_error``.

Hand-written rather than Ray's ``ActorPool``: the pool neither replaces dead actors nor
retries a task on another one, and in-order results with retries are a few lines here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from ..config import ExperimentConfig
from ..errors import CandidateError, EvomergeError
from ..evaluate.evaluator import Evaluator
from ..evaluate.generation import use_engine
from ..merge.candidate import Candidate, Sources
from ..threads import keep_blas_to_one_thread
from .local_executor import RUN_ERRORS, LocalExecutor
from .problem import Evaluation, MergeProblem
from .sources import live_model, open_models

log = logging.getLogger(__name__)
#: Candidates sent ahead to each worker: one merging, one waiting, so no round trip idles it.
QUEUE = 2


class RayExecutorError(EvomergeError):
    """Ray is missing, or its cluster cannot be reached."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayExecutorError('search.executor ray needs Ray: pip install "evomerge[ray]"') from None
    return ray


class Worker:
    """One actor's state: the run's models opened once, the problem, a local executor."""

    def __init__(self, config: dict[str, Any], problem: MergeProblem | None, threads: int, gpu: bool) -> None:
        torch.set_num_threads(threads)
        keep_blas_to_one_thread()
        experiment = ExperimentConfig.model_validate(config)
        merger = open_models(experiment, device="cuda" if gpu else "cpu")
        model, tokenizer = live_model(merger)
        use_engine(model, experiment.output.generation)
        self.local = LocalExecutor(merger, model, tokenizer)
        self.problem = problem

    def set_problem(self, problem: MergeProblem) -> None:
        self.problem = problem

    def score_items(
        self, evaluator: Evaluator, recipe: Candidate, items: Sequence[str] | None = None
    ) -> dict[str, float]:
        ((_, scores),) = self.local.score_items(evaluator, [recipe], None if items is None else [items])
        return scores

    def evaluate(self, recipe: Candidate) -> Evaluation:
        assert self.problem is not None, "set_problem first"
        start = time.perf_counter()
        try:
            return self.local.evaluate_one(self.problem, recipe)
        except CandidateError as err:
            return Evaluation.failed(err, time.perf_counter() - start)
        except RUN_ERRORS:
            raise
        except Exception as err:  # this candidate's own failure, as in LocalExecutor
            return Evaluation.failed(err, time.perf_counter() - start)

    def test(self, recipe: Candidate) -> tuple[tuple[float, ...], float]:
        assert self.problem is not None, "set_problem first"
        return self.local.test(self.problem, recipe)

    def pid(self) -> int:
        import os

        return os.getpid()


def _check_reachable(address: str) -> None:
    """A ``host:port`` (or ``ray://host:port``) that does not answer within 5 s is an error
    now: ``ray.init`` would retry it for minutes."""
    import socket

    if address in ("local", "auto"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as err:
        raise RayExecutorError(
            f"cannot reach Ray at search.ray.address {address!r} ({err}). Start it (`ray start --head`), give "
            "its address (auto, host:6379, or ray://host:10001 with ray[client]), or use address: local"
        ) from None


def _send_token_if_the_cluster_has_one() -> None:
    """Ray 2.5x+ starts a cluster with token authentication when a token is at hand
    (``~/.ray/auth_token``, ``RAY_AUTH_TOKEN``), but a driver joining it by ``host:port``
    sends none unless ``RAY_AUTH_MODE=token`` is set, and is refused (``InvalidAuthToken``)
    while ``address: auto`` is let in. Ray's own start-up check settles the mode as a
    local ``ray.init`` does; an explicit ``RAY_AUTH_MODE`` is left alone. Ray versions
    before token authentication lack the module: nothing to do."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


class RayExecutor:
    """Candidates spread over Ray actors (``search.ray``: address, workers, resources)."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        self.settings = config.search.ray
        self.ray = import_ray()
        self._connect()
        self.actors: list[Any] = []
        self.problem: MergeProblem | None = None
        self._problem_ref: Any = None
        self.retried = 0
        self.respondents_scored = 0

    @classmethod
    def create(
        cls, merger: Sources, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, config: ExperimentConfig
    ) -> RayExecutor:
        return cls(config)

    def _connect(self) -> None:
        """Join the cluster at ``address`` (``local``: start one in this process)."""
        ray, s = self.ray, self.settings
        if ray.is_initialized():
            return
        _check_reachable(s.address)
        try:
            if s.address == "local":
                ray.init(
                    num_cpus=s.workers * s.cpus_per_worker,
                    num_gpus=s.workers * s.gpus_per_worker if s.gpus_per_worker else None,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
            else:
                _send_token_if_the_cluster_has_one()
                ray.init(address=s.address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise RayExecutorError(
                f"cannot reach Ray at search.ray.address {s.address!r}: {err}. Start it (`ray start --head`), "
                "give its address (auto, host:6379, or ray://host:10001 with ray[client]), or use address: local"
            ) from None

    def _new_actor(self) -> Any:
        """A worker holding the current problem (none before the respondents are scored)."""
        s = self.settings
        remote = self.ray.remote(num_cpus=s.cpus_per_worker, num_gpus=s.gpus_per_worker)(Worker)
        config = self.config.model_dump(mode="json", by_alias=True)
        return remote.remote(config, self._problem_ref, max(1, int(s.cpus_per_worker)), s.gpus_per_worker > 0)

    def _start(self, problem: MergeProblem | None = None) -> None:
        """The workers (started once), holding ``problem`` (sent once per problem)."""
        if not self.actors:
            self.actors = [self._new_actor() for _ in range(self.settings.workers)]
            log.info("ray: %d workers started", len(self.actors))
        if problem is not None and problem is not self.problem:
            self.problem, self._problem_ref = problem, self.ray.put(problem)
            self.ray.get([actor.set_problem.remote(self._problem_ref) for actor in self.actors])

    def score_items(
        self, evaluator: Evaluator, recipes: Sequence[Candidate], items: Sequence[Sequence[str]] | None = None
    ) -> Iterator[tuple[int, dict[str, float]]]:
        """The IRT respondents, scored on the workers (each on its ``items``, else on all)."""
        self._start()
        ref = self.ray.put(evaluator)
        each = [None] * len(recipes) if items is None else items
        for i, result in self._dispatch("score_items", recipes, (ref,), each):
            if isinstance(result, Evaluation):  # every worker it went to died
                raise RayExecutorError(f"respondent {recipes[i].digest[:12]} could not be scored: {result.error}")
            self.respondents_scored += 1
            yield i, result

    def evaluate(self, problem: MergeProblem, recipes: Sequence[Candidate]) -> Iterator[tuple[int, Evaluation]]:
        """Each recipe on the next free worker; each result handed on as it comes."""
        self._start(problem)
        yield from self._dispatch("evaluate", recipes, ())

    def _dispatch(
        self, method: str, recipes: Sequence[Candidate], args: tuple[Any, ...], each: Sequence[Any] | None = None
    ) -> Iterator[tuple[int, Any]]:
        """``actor.method(*args, recipe)`` for each recipe (``actor.method(*args, recipe,
        each[i])`` with ``each``), each result as it comes. Each worker has
        ``QUEUE`` recipes sent ahead, so it never waits for a round trip. A dead worker is
        replaced; the recipe it was running (the first sent of those it held: an actor runs
        its tasks in order) counts a death, the ones queued behind it are sent again as they
        were. A recipe with more than ``retries`` deaths is given up as failed."""
        ray = self.ray
        todo = list(range(len(recipes)))[::-1]  # popped from the end: first asked, first sent
        deaths = [0] * len(recipes)
        running: dict[Any, tuple[int, int, Any, int]] = {}  # ref -> (recipe index, slot, actor, sent as)
        culprit: dict[int, int] = {}  # id(dead actor) -> the "sent as" number of the task it ran
        dead: list[Any] = []
        done: dict[int, Any] = {}
        free = [slot for _ in range(QUEUE) for slot in range(len(self.actors))][::-1]
        handed = sent = 0
        while handed < len(recipes):
            while todo and free:
                i, slot = todo.pop(), free.pop()
                actor = self.actors[slot]
                running[getattr(actor, method).remote(*args, recipes[i], *(() if each is None else (each[i],)))] = (
                    i,
                    slot,
                    actor,
                    sent,
                )
                sent += 1
            if running:
                ready, _ = ray.wait(list(running), num_returns=1)
                i, slot, actor, number = running.pop(ready[0])
                try:
                    done[i] = ray.get(ready[0])
                except ray.exceptions.RayActorError as err:
                    if id(actor) not in culprit:  # the first report of this death
                        held = [n for (_, _, a, n) in running.values() if a is actor]
                        culprit[id(actor)] = min([number, *held])
                        dead.append(actor)  # kept, so that its id is not reused while culprit holds it
                        self.actors[slot] = self._new_actor()
                    if culprit[id(actor)] == number:
                        deaths[i] += 1
                        self._retry(slot, i, deaths[i], err, recipes, done, todo)
                    else:
                        todo.append(i)  # queued behind the one that died: not its fault
                except ray.exceptions.RayTaskError as err:
                    raise (err.cause if isinstance(err.cause, BaseException) else err) from None
                free.append(slot)
            for i in sorted(done):  # as they finish: the store orders rows by their ask position
                yield i, done.pop(i)
                handed += 1

    def _retry(
        self,
        slot: int,
        i: int,
        deaths: int,
        err: Exception,
        recipes: Sequence[Candidate],
        done: dict[int, Any],
        todo: list[int],
    ) -> None:
        """A candidate its worker died on: sent again, or failed after the retries."""
        retries = self.settings.retries
        reason = str(err).splitlines()[0]
        if deaths > retries:
            log.warning("ray: candidate %s failed on %d workers; stored as failed", recipes[i].digest[:12], deaths)
            done[i] = Evaluation(None, 0.0, 0.0, f"WorkerDied: {deaths} workers died on it ({reason})")
        else:
            self.retried += 1
            log.warning(
                "ray: worker %d died during candidate %s (%s); retrying on a fresh worker (%d of %d retries)",
                slot,
                recipes[i].digest[:12],
                reason,
                deaths,
                retries,
            )
            todo.append(i)

    def evaluate_one(self, problem: MergeProblem, recipe: Candidate) -> Evaluation:
        ((_, evaluation),) = self.evaluate(problem, [recipe])
        if evaluation.error is not None:
            raise CandidateError(f"candidate {recipe.digest[:12]} failed on the Ray workers: {evaluation.error}")
        return evaluation

    def test(self, problem: MergeProblem, recipe: Candidate) -> tuple[tuple[float, ...], float]:
        self._start(problem)
        result: tuple[tuple[float, ...], float] = self.ray.get(self.actors[0].test.remote(recipe))
        return result

    def worker_pids(self) -> list[int]:
        return [self.ray.get(a.pid.remote()) for a in self.actors]

    def close_actors(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors, self.problem, self._problem_ref = [], None, None

    def close(self) -> None:
        self.close_actors()
