"""The ask/tell loop on the real demo models: every algorithm through the Searcher,
dedup, termination, the store, Pareto fronts. Objectives here are cheap functions of
the merged weights (the live model really holds each candidate's merge), so these
tests time the loop, not generation; test_search_run.py runs the real task."""

import numpy as np
import pytest
import torch

from evomerge.merge.engine import Merger
from evomerge.merge.run import load_live_model
from evomerge.models.pool import ModelPool
from evomerge.search import ALGORITHMS, SearchSpace, make_algorithm
from evomerge.search.local_executor import LocalExecutor
from evomerge.search.loop import Callback, CandidateFailedError, Searcher, Termination, winners
from evomerge.search.objectives import FunctionObjective, ObjectiveError
from evomerge.search.problem import MergeProblem
from evomerge.search.store import RunStore


@pytest.fixture(scope="module")
def live(demo_family):
    from transformers import AutoTokenizer

    models = demo_family / "models"
    base, eps = str(models / "base"), [str(models / n) for n in ("add", "greek", "cyrillic")]
    merger = Merger(ModelPool.open(base, eps))
    return base, eps, merger, load_live_model(merger), AutoTokenizer.from_pretrained(base)


def distances(model, references):
    """How far the merged weights are from each reference state (one objective each)."""
    out = []
    for ref in references:
        total = sum(float((p - ref[n]).pow(2).sum()) for n, p in model.named_parameters())
        out.append(total)
    return out


@pytest.fixture(scope="module")
def endpoint_states(live):
    from transformers import AutoModelForCausalLM

    _, eps, *_ = live
    return [dict(AutoModelForCausalLM.from_pretrained(e).named_parameters()) for e in eps]


def searcher(
    live, tmp_path, objective, algorithm="GA", n_obj=1, method="task_arithmetic", pop=6, on_error="stop", callbacks=(),
    **termination,
):  # fmt: skip
    base, eps, merger, model, tokenizer = live
    space = SearchSpace(method, eps, base, num_layers=merger.pool.num_layers)
    problem = MergeProblem(space, [objective])
    store = RunStore(tmp_path / "run.sqlite")
    algo = make_algorithm(algorithm, n_obj, population_size=pop, seed=0)
    executor = LocalExecutor(merger, model, tokenizer)
    return Searcher(problem, algo, executor, store, Termination(**termination), on_error=on_error, callbacks=callbacks)


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_every_algorithm_runs_a_generation_through_the_loop(name, live, endpoint_states, tmp_path):
    multi = ALGORITHMS[name][1] == "multi"
    n_obj = 3 if name in ("NSGA3", "MOEAD", "CTAEA", "RVEA") else 2 if multi else 1
    refs = endpoint_states[:n_obj]
    objective = FunctionObjective(lambda m, t: distances(m, refs), [f"d{i}" for i in range(n_obj)], maximize=False)
    s = searcher(live, tmp_path, objective, name, n_obj, generations=1)
    assert s.run() in ("1 generations", "the algorithm converged")
    rows = list(s.store.evaluations())
    assert len(rows) >= 1 and len(s.store.generations()) == 1
    assert all(len(r.objectives) == n_obj and np.isfinite(r.objectives).all() for r in rows)


def test_a_recipe_seen_before_is_not_evaluated_again(live, tmp_path):
    """layer_select over one group has 4 possible recipes; a population of 8 repeats them."""
    calls = []

    def fn(model, tokenizer):
        calls.append(1)
        return float(next(model.parameters()).sum())

    s = searcher(live, tmp_path, FunctionObjective(fn), method="layer_select", pop=8, generations=3)
    s.run()
    rows = list(s.store.evaluations())
    asked = [d for g in s.store.generations() for d in g.asked]
    assert len(asked) == 24 and len(rows) <= 4 < len(asked)
    assert len(calls) == len(rows) == len({r.digest for r in rows})


def test_termination_by_evaluations_and_by_patience(live, tmp_path):
    by_evals = searcher(live, tmp_path / "a", FunctionObjective(lambda m, t: 1.0), max_evaluations=10)
    assert "evaluations" in by_evals.run() and 10 <= by_evals.store.count() < 10 + 6
    flat = searcher(live, tmp_path / "b", FunctionObjective(lambda m, t: 1.0), generations=20, patience=2)
    assert flat.run() == "no improvement in 2 generations"
    history = flat.store.generations()
    assert len(history) == 3 and [g.best["improved"] for g in history] == [True, False, False]


def test_time_budget_counts_the_search_wall_time(live, tmp_path):
    s = searcher(live, tmp_path, FunctionObjective(lambda m, t: 1.0), max_seconds=1e-3)
    assert "max_seconds" in s.run() and len(s.store.generations()) == 1


def test_generation_rows_record_where_the_time_went(live, endpoint_states, tmp_path):
    objective = FunctionObjective(lambda m, t: distances(m, endpoint_states[:1]), maximize=False)
    s = searcher(live, tmp_path, objective, generations=2)
    s.run()
    for g in s.store.generations():
        t = g.seconds
        assert t["wall"] >= t["ask"] + t["evaluate"] + t["tell"] - 1e-6 and t["merge"] > 0
        assert len(g.state["X"]) == len(g.state["F"]) >= 1
    best = winners(list(s.store.evaluations()), [False])[0]
    assert best.objectives[0] == min(r.objectives[0] for r in s.store.evaluations())


def test_multi_objective_winners_are_the_pareto_front(live, endpoint_states, tmp_path):
    """Closeness to the greek and to the cyrillic specialist conflict: no single merge is
    best at both, so the front holds several recipes, none dominating another."""
    refs = endpoint_states[1:3]
    objective = FunctionObjective(lambda m, t: distances(m, refs), ["greek", "cyrillic"], maximize=False)
    s = searcher(live, tmp_path, objective, "NSGA2", 2, pop=8, generations=3)
    s.run()
    rows = list(s.store.evaluations())
    front = winners(rows, [False, False])
    assert len(front) >= 2
    f = np.array([r.objectives for r in front])
    for a in f:
        assert not any((b <= a).all() and (b < a).any() for b in f)
    others = np.array([r.objectives for r in rows if r not in front])
    assert all(any((b <= a).all() for b in f) for a in others)
    assert s.store.generations()[-1].best["front"] == len(front)


def test_a_fitness_function_with_the_wrong_arity_or_nan_is_refused(live, tmp_path):
    two = searcher(live, tmp_path / "a", FunctionObjective(lambda m, t: [1.0, 2.0]), generations=1)
    with pytest.raises(ObjectiveError, match="2 values for 1 objectives"):
        two.run()
    nan = searcher(live, tmp_path / "b", FunctionObjective(lambda m, t: float("nan")), generations=1)
    with pytest.raises(CandidateFailedError, match=r"finite.*resume` tries it again"):
        nan.run()
    rows = list(nan.store.evaluations(failed=True))  # the failure is stored, with its error
    assert len(rows) == 1 and rows[0].state == "fail" and "finite" in rows[0].error
    assert list(nan.store.evaluations()) == []  # and is no result


def test_skip_goes_on_without_failed_candidates_and_resume_keeps_them(live, tmp_path):
    """on_error=skip: a candidate that raises is stored as FAIL, told to the algorithm as the
    worst, and never a winner; a resumed run replays it from the store, not again."""
    calls = []

    def flaky(m, t):
        calls.append(1)
        if len(calls) % 3 == 0:
            raise RuntimeError("boom")
        return float(len(calls))

    s = searcher(live, tmp_path, FunctionObjective(flaky), on_error="skip", generations=2, pop=6)
    assert s.run() == "2 generations"
    rows = list(s.store.evaluations(failed=True))
    failed = [r for r in rows if not r.ok]
    assert len(failed) == 4 and all(r.error == "RuntimeError: boom" for r in failed)
    assert winners(list(s.store.evaluations()), [True])[0].ok
    s.store.export_csv(tmp_path / "e.csv", [g.name for g in s.problem.space.all_genes], s.problem.names)
    lines = (tmp_path / "e.csv").read_text().splitlines()
    assert lines[0].endswith(",state,error") and sum(line.endswith(",fail,RuntimeError: boom") for line in lines) == 4
    s.store.db.execute("DELETE FROM run WHERE key = 'stop_reason'")
    n = len(calls)
    again = searcher(live, tmp_path, FunctionObjective(flaky), on_error="skip", generations=2, pop=6)
    assert again.run() == "2 generations" and len(calls) == n  # replayed: nothing evaluated again


def test_callbacks_see_every_evaluation_and_generation(live, tmp_path):
    """A callback attaches without editing the loop: it sees what the store stores."""
    seen = []

    class Watch(Callback):
        def on_evaluation(self, searcher, done):
            seen.append(("eval", done.generation, done.digest))

        def on_generation(self, searcher, row, replayed):
            seen.append(("gen", row.generation, row.evaluations))

        def on_end(self, searcher, reason):
            seen.append(("end", reason))

    s = searcher(live, tmp_path, FunctionObjective(lambda m, t: 1.0), callbacks=[Watch()], generations=2, pop=4)
    s.run()
    stored = [r.digest for r in s.store.evaluations()]
    assert [d for kind, _, d in (x for x in seen if x[0] == "eval")] == stored
    assert [x for x in seen if x[0] == "gen"] == [("gen", 0, 4), ("gen", 1, len(stored))]
    assert seen[-1] == ("end", "2 generations")


def test_the_live_model_holds_each_candidate(live, tmp_path):
    """What the objective sees is the decoded recipe's merge: compare with a fresh merge."""
    base, eps, *_ = live
    seen = {}

    def fn(m, t):
        seen[len(seen)] = next(p for n, p in m.named_parameters() if "layers.0" in n).detach().clone()
        return float(len(seen))

    s = searcher(live, tmp_path, FunctionObjective(fn), pop=4, generations=1)
    s.run()
    rows = list(s.store.evaluations())
    fresh = Merger(ModelPool.open(base, eps))
    other = load_live_model(fresh)
    for i, row in enumerate(rows):
        recipe = s.problem.space.decode(row.x)
        assert recipe.to_yaml() == row.recipe
        fresh.merge_into(other, recipe)
        expected = next(p for n, p in other.named_parameters() if "layers.0" in n)
        assert torch.equal(seen[i], expected)
