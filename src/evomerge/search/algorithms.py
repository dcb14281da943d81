"""Every pymoo algorithm the search offers, by its class name, with options passed through.

The algorithm is built here and then driven by ask/tell (the loop owns batching,
caching, storage and resume), so any option pymoo accepts works. What pymoo cannot
default is defaulted here: reference directions (NSGA-III, U-NSGA-III, C-TAEA, RVEA,
MOEA/D) as a Das-Dennis lattice sized near the population, and reference points
(R-NSGA-II, R-NSGA-III) at the aspiration of every objective (a perfect score).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import EvomergeError

#: name -> (module, single- or multi-objective)
ALGORITHMS: dict[str, tuple[str, str]] = {
    "GA": ("pymoo.algorithms.soo.nonconvex.ga", "single"),
    "DE": ("pymoo.algorithms.soo.nonconvex.de", "single"),
    "BRKGA": ("pymoo.algorithms.soo.nonconvex.brkga", "single"),
    "NelderMead": ("pymoo.algorithms.soo.nonconvex.nelder", "single"),
    "PatternSearch": ("pymoo.algorithms.soo.nonconvex.pattern", "single"),
    "CMAES": ("pymoo.algorithms.soo.nonconvex.cmaes", "single"),
    "CMAwM": ("evomerge.search.cmawm", "single"),  # CMA-ES with margin (the cmaes package): binary genes
    "ES": ("pymoo.algorithms.soo.nonconvex.es", "single"),
    "SRES": ("pymoo.algorithms.soo.nonconvex.sres", "single"),
    "ISRES": ("pymoo.algorithms.soo.nonconvex.isres", "single"),
    "NSGA2": ("pymoo.algorithms.moo.nsga2", "multi"),
    "RNSGA2": ("pymoo.algorithms.moo.rnsga2", "multi"),
    "NSGA3": ("pymoo.algorithms.moo.nsga3", "multi"),
    "UNSGA3": ("pymoo.algorithms.moo.unsga3", "multi"),
    "RNSGA3": ("pymoo.algorithms.moo.rnsga3", "multi"),
    "MOEAD": ("pymoo.algorithms.moo.moead", "multi"),
    "AGEMOEA": ("pymoo.algorithms.moo.age", "multi"),
    "CTAEA": ("pymoo.algorithms.moo.ctaea", "multi"),
    "SMSEMOA": ("pymoo.algorithms.moo.sms", "multi"),
    "RVEA": ("pymoo.algorithms.moo.rvea", "multi"),
}
_NEEDS_REF_DIRS = {"NSGA3", "UNSGA3", "CTAEA", "RVEA", "MOEAD"}
_NEEDS_REF_POINTS = {"RNSGA2", "RNSGA3"}
#: Algorithms that take pop_size through **kwargs (their parent's constructor).
_POP_VIA_KWARGS = {"SRES", "ISRES", "RNSGA2", "UNSGA3"}
#: The knobs users of simple merge GAs expect, mapped onto pymoo's GA.
GA_PRESET_KEYS = ("population_size", "crossover_rate", "mutation_rate", "elitism_rate")


class AlgorithmError(EvomergeError):
    """An unknown algorithm or option, or an algorithm that cannot serve the objectives.
    ``key``: the config key at fault under ``search`` (algorithm or options)."""

    def __init__(self, message: str, key: str = "options") -> None:
        super().__init__(message)
        self.key = key


def _folded(name: str) -> str:
    """A name as people write it, folded: case, dashes, slashes and spaces ignored, and a
    trailing Roman II/III read as 2/3 (``NSGA-II``, ``nsga2``, ``U-NSGA-III``, ``MOEA/D``)."""
    folded = re.sub(r"[\s\-_/.]", "", name).lower()
    return re.sub(r"iii$", "3", re.sub(r"(?<!i)ii$", "2", folded))


def canonical_algorithm(name: str) -> str:
    """The registry's spelling of ``name`` (``cmaes`` -> ``CMAES``), or an error with a hint."""
    if name in ALGORITHMS:
        return name
    by_folded = {_folded(n): n for n in ALGORITHMS}
    if _folded(name) in by_folded:
        return by_folded[_folded(name)]
    close = difflib.get_close_matches(_folded(name), list(by_folded), n=1, cutoff=0.6)
    hint = f"; did you mean {by_folded[close[0]]!r}?" if close else ""
    raise AlgorithmError(f"unknown algorithm {name!r}{hint} Choose one of: {', '.join(ALGORITHMS)}", "algorithm")


def algorithm_class(name: str) -> type:
    name = canonical_algorithm(name)
    module, _ = ALGORITHMS[name]
    return getattr(importlib.import_module(module), name)


def is_multi_objective(name: str) -> bool:
    return ALGORITHMS[canonical_algorithm(name)][1] == "multi"


def make_algorithm(
    name: str,
    n_obj: int,
    options: Mapping[str, Any] | None = None,
    *,
    population_size: int | None = None,
    seed: int = 0,
) -> Any:
    """A pymoo algorithm object, ready for ``setup``; ``options`` go to its constructor."""
    name = canonical_algorithm(name)
    cls = algorithm_class(name)
    options = dict(options or {})
    kind = ALGORITHMS[name][1]
    if kind == "single" and n_obj > 1:
        multi = ", ".join(n for n, (_, k) in ALGORITHMS.items() if k == "multi")
        raise AlgorithmError(
            f"{name} optimises one objective; this search has {n_obj}. Use one of: {multi}", "algorithm"
        )
    accepted = _accepted_options(cls)
    if name == "GA":
        options = _ga_preset(options, population_size)
    elif name == "BRKGA":  # its population is elites + offspring + mutants (pymoo: 200 + 700 + 100)
        pop = population_size or 20
        options.setdefault("n_elites", max(1, round(0.2 * pop)))
        options.setdefault("n_mutants", max(1, round(0.1 * pop)))
        options.setdefault("n_offsprings", max(1, pop - options["n_elites"] - options["n_mutants"]))
        accepted.discard("pop_size")
    elif "pop_size" not in inspect.signature(cls.__init__).parameters and name not in _POP_VIA_KWARGS:  # type: ignore[misc]
        accepted.discard("pop_size")  # derived from other options (reference directions, a simplex, ...)
    elif population_size is not None and "pop_size" not in options:
        options["pop_size"] = population_size
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise AlgorithmError(
            f"{name} has no option {unknown[0]!r}; its options are: {', '.join(sorted(accepted))}"
            + (f" (and the GA preset: {', '.join(GA_PRESET_KEYS)})" if name == "GA" else "")
        )
    defaults = _option_defaults(cls)
    for key, value in options.items():
        if _is_operator(defaults.get(key)) and not _is_operator(value):
            raise AlgorithmError(
                f"{name}'s option {key!r} is a pymoo {type(defaults[key]).__name__} object, which a config cannot "
                f"give ({value!r})"
                + ("; for a rate use the GA preset's mutation_rate or crossover_rate" if name == "GA" else "")
            )
    if name in _NEEDS_REF_DIRS and "ref_dirs" not in options:
        options["ref_dirs"] = reference_directions(n_obj, options.get("pop_size", population_size or 20))
    if name in _NEEDS_REF_POINTS and "ref_points" not in options:
        options["ref_points"] = np.full((1, n_obj), -1.0)  # every objective perfect (see Objectives)
    if name == "RNSGA3" and "pop_per_ref_point" not in options:
        options["pop_per_ref_point"] = len(reference_directions(n_obj, population_size or 20))
    if name == "CMAES":
        cls = _clock_free_cmaes(cls)
        if "seed" in accepted and "seed" not in options:
            options["seed"] = seed
    try:
        return cls(**options)
    except (TypeError, ValueError) as err:
        raise AlgorithmError(f"{name}: {err}") from err


def _clock_free_cmaes(cls: type) -> type:
    """pymoo's CMAES hands its seed to cma, which reads a seed of 0 as "seed from the
    clock" (``cma.evolution_strategy``: ``if not opts['seed']``): every run with the default
    seed 0 searched differently. cma gets ``seed + 1`` (1 to 2**31 - 1) instead."""

    class CMAES(cls):
        def _setup(self, problem: Any, **kwargs: Any) -> None:
            super()._setup(problem, **kwargs)
            self.options["seed"] = int(self.options["seed"]) % (2**31 - 1) + 1

    return CMAES


def reference_directions(n_obj: int, target: int) -> np.ndarray:
    """A Das-Dennis lattice with as many directions as possible up to ``target`` (at least n_obj)."""
    from pymoo.util.ref_dirs import get_reference_directions
    from scipy.special import comb

    partitions = 1
    while comb(n_obj + partitions, n_obj - 1, exact=True) <= max(target, n_obj):
        partitions += 1
    return get_reference_directions("das-dennis", n_obj, n_partitions=partitions)


def _accepted_options(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        names |= {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break  # this class does not pass further options up
    return names


def _option_defaults(cls: type) -> dict[str, Any]:
    """Each constructor option's default, from the class up the chain that passes options on."""
    defaults: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        for n, p in params.items():
            if p.default is not p.empty:
                defaults.setdefault(n, p.default)
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break
    return defaults


def _is_operator(value: Any) -> bool:
    """An object of pymoo's (a mutation, a sampling, ...), not a plain value a config can hold."""
    return type(value).__module__.startswith("pymoo.")


def _ga_preset(options: dict[str, Any], population_size: int | None) -> dict[str, Any]:
    """GA with the simple-merge-GA knobs: SBX crossover at ``crossover_rate``, polynomial
    mutation with per-gene probability ``mutation_rate``, and ``elitism_rate`` of the
    population kept unchanged (pymoo's GA survives the best of parents and offspring;
    elitism here sets how many offspring are made per generation)."""
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM

    pop = options.pop("population_size", population_size or options.get("pop_size", 20))
    options.setdefault("pop_size", pop)
    if "crossover_rate" in options:
        options.setdefault("crossover", SBX(prob=options.pop("crossover_rate"), eta=15))
    if "mutation_rate" in options:
        options.setdefault("mutation", PM(prob_var=options.pop("mutation_rate"), eta=20))
    if "elitism_rate" in options:
        rate = float(options.pop("elitism_rate"))
        if not 0 <= rate < 1:
            raise AlgorithmError(f"elitism_rate must be in [0, 1), got {rate}")
        options.setdefault("n_offsprings", max(1, round(options["pop_size"] * (1 - rate))))
    return options
