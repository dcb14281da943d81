"""Every algorithm in the registry runs a generation, through ask/tell, on a cheap objective."""

import numpy as np
import pytest
from pymoo.core.evaluator import Evaluator
from pymoo.core.individual import Individual
from pymoo.core.population import Population
from pymoo.core.problem import Problem
from pymoo.problems.static import StaticProblem

from evomerge.search.algorithms import ALGORITHMS, AlgorithmError, make_algorithm


def objectives(x: np.ndarray, n_obj: int) -> np.ndarray:
    """Sphere-like and conflicting: each objective pulls x toward a different corner."""
    return np.column_stack([((x - k / max(1, n_obj - 1)) ** 2).sum(axis=1) for k in range(n_obj)])


def generations(name: str, n_obj: int, n: int = 2, **options) -> object:
    problem = Problem(n_var=4, n_obj=n_obj, xl=0.0, xu=1.0)
    algorithm = make_algorithm(name, n_obj, options, population_size=8, seed=0)
    algorithm.setup(problem, termination=("n_gen", 10), seed=0)
    evaluated = 0
    for _ in range(n):
        asked = algorithm.ask()  # an Individual for algorithms that ask one point at a time (MOEA/D, ...)
        pop = Population([asked]) if isinstance(asked, Individual) else asked
        x = pop.get("X")
        assert x.ndim == 2 and x.shape[1] == 4 and ((x >= 0) & (x <= 1)).all()
        Evaluator(skip_already_evaluated=False).eval(StaticProblem(problem, F=objectives(x, n_obj)), pop)
        algorithm.tell(infills=asked)
        evaluated += len(pop)
    assert evaluated > 0 and algorithm.opt is not None and len(algorithm.opt) >= 1
    return algorithm


SINGLE = [n for n, (_, kind) in ALGORITHMS.items() if kind == "single"]
MULTI = [n for n, (_, kind) in ALGORITHMS.items() if kind == "multi"]


@pytest.mark.parametrize("name", SINGLE)
def test_single_objective_algorithm_runs(name):
    algorithm = generations(name, 1)
    assert algorithm.opt.get("F").shape[1] == 1


@pytest.mark.parametrize("n_obj", [2, 3])
@pytest.mark.parametrize("name", MULTI)
def test_multi_objective_algorithm_runs(name, n_obj):
    algorithm = generations(name, n_obj)
    assert algorithm.opt.get("F").shape[1] == n_obj


def test_ga_preset_knobs_reach_pymoo():
    ga = make_algorithm(
        "GA", 1, {"population_size": 10, "crossover_rate": 0.7, "mutation_rate": 0.2, "elitism_rate": 0.2}
    )
    assert ga.pop_size == 10 and ga.n_offsprings == 8
    assert ga.mating.crossover.prob.value == 0.7 and ga.mating.mutation.prob_var.value == 0.2


def test_same_seed_same_first_population():
    first = generations("DE", 1, n=1).pop.get("X")
    assert np.array_equal(first, generations("DE", 1, n=1).pop.get("X"))


@pytest.mark.parametrize("name", SINGLE + MULTI)
def test_same_seed_same_search(name):
    """Three generations twice, same seed: the same points asked. cma reads a seed of 0 as
    "seed from the clock", which made every CMAES run with the default seed differ."""
    n_obj = 1 if name in SINGLE else 2
    first = generations(name, n_obj, n=3)
    second = generations(name, n_obj, n=3)
    assert np.array_equal(first.pop.get("X"), second.pop.get("X")), name


def test_errors_list_the_valid_choices():
    with pytest.raises(AlgorithmError, match="did you mean 'NSGA2'"):
        make_algorithm("NSGA-22", 2)
    with pytest.raises(AlgorithmError, match="Choose one of: GA, DE"):
        make_algorithm("simulated_annealing", 1)
    with pytest.raises(AlgorithmError, match=r"has no option 'popsize'; its options are: .*pop_size"):
        make_algorithm("DE", 1, {"popsize": 10})
    with pytest.raises(AlgorithmError, match=r"optimises one objective; this search has 2\. Use one of: NSGA2"):
        make_algorithm("CMAES", 2)


@pytest.mark.parametrize("name", ["GA", "DE", "CMAES", "ES", "SRES", "ISRES", "NSGA2", "RNSGA2", "NSGA3", "UNSGA3"])
def test_population_size_reaches_the_algorithm(name):
    n_obj = 2 if ALGORITHMS[name][1] == "multi" else 1
    algorithm = make_algorithm(name, n_obj, population_size=12)
    size = algorithm.options["popsize"] if name == "CMAES" else algorithm.pop_size  # CMAES hands it to cma
    assert size == 12


@pytest.mark.parametrize(
    ("written", "name"),
    [("nsga2", "NSGA2"), ("NSGA-II", "NSGA2"), ("U-NSGA-III", "UNSGA3"), ("R-NSGA-II", "RNSGA2"), ("cmaes", "CMAES"),
     ("CMA-ES", "CMAES"), ("ga", "GA"), ("Nelder-Mead", "NelderMead"), ("MOEA/D", "MOEAD"), ("sms-emoa", "SMSEMOA")],
)  # fmt: skip
def test_algorithm_names_are_matched_without_case_or_dashes(written, name, tmp_path):
    from evomerge.loader import load_config
    from evomerge.search.algorithms import canonical_algorithm

    assert canonical_algorithm(written) == name
    assert type(make_algorithm(written, 2 if ALGORITHMS[name][1] == "multi" else 1)).__name__ == name
    config = tmp_path / "c.yaml"
    config.write_text(f"models: {{base: a, endpoints: [b]}}\nsearch: {{algorithm: '{written}'}}\n")
    assert load_config(config).search.algorithm == name  # stored in the registry's spelling
