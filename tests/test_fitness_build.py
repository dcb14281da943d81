"""From a fitness config and respondents' scores to an estimator; the experiment config."""

import numpy as np
import pytest
from scipy.special import expit

from evomerge.config import ConfigError, FitnessConfig
from evomerge.errors import EvomergeError
from evomerge.fitness import GPIRT, MPIRT, IRTFits, Respondent, Responses, build_estimator, single_model
from evomerge.fitness.build import chosen_selection
from evomerge.fitness.fits import LAMBDA_GRID
from evomerge.loader import load_config


def simulated_responses(n_extra: int = 18, n_items: int = 200, seed: int = 0, items_seed: int = 0) -> Responses:
    """Two endpoints with distinct skills, and extras whose abilities mix theirs, on the
    items that ``items_seed`` draws."""
    items = np.random.default_rng(items_seed)
    a = np.abs(items.normal(1, 0.4, size=(n_items, 2)))
    b = items.normal(0, 1, size=n_items)
    rng = np.random.default_rng(seed)
    endpoints = np.array([[2.0, -1.0], [-1.0, 2.0]])
    mixes = rng.uniform(0, 1, size=(n_extra, 2)) @ endpoints
    theta = np.vstack([[0.0, 0.0], endpoints, mixes])
    scores = (rng.random((len(theta), n_items)) < expit(theta @ a.T - b)).astype(float)
    kinds = ["base", "endpoint", "endpoint"] + ["extra"] * n_extra
    recipe = single_model("m")
    who = tuple(Respondent(f"r{i}", k, recipe) for i, k in enumerate(kinds))  # type: ignore[arg-type]
    return Responses(who, tuple(str(i) for i in range(n_items)), scores)


def test_full_needs_no_respondents():
    est = build_estimator(FitnessConfig(), 7)
    assert len(est.anchors) == 7 and est.estimate([1, 0, 1, 0, 1, 0, 1]) == pytest.approx(4 / 7)


def test_irt_estimators_are_built_with_their_parts_and_are_reproducible():
    responses = simulated_responses()
    fits = IRTFits(responses, dim=2)
    config = FitnessConfig(estimator="gpirt", anchors=20)
    first = build_estimator(config, 200, fits=fits)
    assert isinstance(first, GPIRT) and first.lam in LAMBDA_GRID and len(first.anchors) == 20
    again = build_estimator(config, 200, fits=IRTFits(responses, dim=2))
    assert np.array_equal(first.anchors.index, again.anchors.index) and first.lam == again.lam
    y = responses.scores[5, first.anchors.index]
    assert first.estimate(y) == again.estimate(y)
    other_seed = build_estimator(config.model_copy(update={"seed": 1}), 200, fits=fits)
    assert not np.array_equal(first.anchors.index, other_seed.anchors.index)

    mp = build_estimator(FitnessConfig(estimator="mpirt", anchors=20), 200, fits=fits)
    assert isinstance(mp, MPIRT) and np.array_equal(mp.basis, fits.full.theta[[1, 2]])


def test_chosen_lambda_is_no_worse_on_validation_than_either_extreme():
    responses = simulated_responses()
    fits = IRTFits(responses, dim=2)
    est = build_estimator(FitnessConfig(estimator="gpirt", anchors=15), 200, fits=fits)
    val = responses.scores[fits.validation_rows]
    assert len(val) == 6  # every third of 18 extras

    def validation_mae(lam: float) -> float:
        inner = GPIRT(est.anchors, fits.train, lam)
        return float(np.mean([abs(inner.estimate(r[est.anchors.index]) - r.mean()) for r in val]))

    assert validation_mae(est.lam) <= min(validation_mae(0.0), validation_mae(1.0)) + 1e-12


def test_lambda_falls_back_when_there_are_too_few_validation_respondents(caplog):
    fits = IRTFits(simulated_responses(n_extra=3), dim=1)
    est = build_estimator(FitnessConfig(estimator="gpirt", anchors=10), 200, fits=fits)
    assert est.lam == 0.5 and "too few" in caplog.text
    fixed = build_estimator(FitnessConfig(estimator="gpirt", anchors=10, **{"lambda": 0.2}), 200, fits=fits)
    assert fixed.lam == 0.2


def test_irt_estimators_without_respondents_say_what_to_do():
    with pytest.raises(EvomergeError, match="use estimator mean"):
        build_estimator(FitnessConfig(estimator="pirt", anchors=10), 100)


def test_on_simulated_merges_mpirt_beats_random_subsampling():
    """The premise of the IRT estimators, on data that follows their model: fitted on 12
    extra respondents, tested on 30 other merges of the same items."""
    fits = IRTFits(simulated_responses(n_extra=12, seed=1), dim=2)
    merges = simulated_responses(n_extra=30, seed=2).scores[3:]
    truth = merges.mean(axis=1)

    def mae(config: FitnessConfig) -> float:
        est = build_estimator(config, 200, fits=fits)
        return float(np.mean(np.abs([est.estimate(r[est.anchors.index]) for r in merges] - truth)))

    seeds = range(5)
    mpirt = np.mean([mae(FitnessConfig(estimator="mpirt", anchors=20, seed=s)) for s in seeds])
    mean = np.mean([mae(FitnessConfig(estimator="mean", anchors=20, seed=s)) for s in seeds])
    assert mpirt < mean, (mpirt, mean)


# -- the experiment config --------------------------------------------------------------


def test_config_errors_name_the_key_and_suggest():
    base = {"models": {"base": "z", "endpoints": ["a"]}, "tasks": [{"name": "t", "data": "x.jsonl"}]}
    with pytest.raises(ConfigError, match=r"fitness.anchor: unknown key; did you mean 'anchors'"):
        load_config({**base, "fitness": {"estimator": "mpirt", "anchor": 20}})
    with pytest.raises(ConfigError, match=r"fitness: .*needs anchors"):
        load_config({**base, "fitness": {"estimator": "mpirt"}})
    with pytest.raises(ConfigError, match=r"fitness.estimator: unknown estimator 'irt'. Did you mean 'pirt'\?"):
        load_config({**base, "fitness": {"estimator": "irt"}})
    with pytest.raises(ConfigError, match=r"merge.method: .*ties"):
        load_config({**base, "merge": {"method": "tie"}})
    with pytest.raises(ConfigError, match=r"tasks.0: .*give one of: data .*lm_eval"):
        load_config({**base, "tasks": [{"name": "t"}]})
    with pytest.raises(ConfigError, match=r"tasks.0: .*give one of"):
        load_config({**base, "tasks": [{"name": "t", "data": "x.jsonl", "lm_eval": "gsm8k"}]})
    with pytest.raises(ConfigError, match=r"tasks.0: .*metric is for lm_eval tasks"):
        load_config({**base, "tasks": [{"name": "t", "data": "x.jsonl", "metric": "acc"}]})
    with pytest.raises(ConfigError, match="not found"):
        load_config("missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("models: [a\ntasks: {")


def test_search_and_output_sections_are_checked():
    base = {"models": {"base": "z", "endpoints": ["a"]}, "tasks": [{"name": "t", "data": "x.jsonl"}]}
    assert load_config(base).search.algorithm == "GA"
    with pytest.raises(ConfigError, match=r"search.generation: unknown key; did you mean 'generations'"):
        load_config({**base, "search": {"generation": 3}})
    with pytest.raises(
        ConfigError, match=r"GA's option 'mutation' is a pymoo PM object.*use the GA preset's mutation_rate"
    ):
        load_config({**base, "tasks": [{"name": "t", "data": "x.jsonl"}], "search": {"options": {"mutation": 0.3}}})
    with pytest.raises(ConfigError, match=r"CMAES optimises one objective; this search has 2"):
        load_config({**base, "tasks": [{"name": "t", "data": "x.jsonl"}, {"name": "u", "data": "x.jsonl"}],
                     "search": {"algorithm": "CMAES"}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"merge.method ties merges task vectors .*: set models.base"):
        load_config({"models": {"endpoints": ["a", "b"]}, "merge": {"method": "ties"}})
    with pytest.raises(ConfigError, match=r"search.algorithm: .*did you mean 'CMAES'"):
        load_config({**base, "search": {"algorithm": "CMA-ESS"}})
    with pytest.raises(ConfigError, match=r"search: .*give a budget"):
        load_config({**base, "search": {"generations": None}})
    with pytest.raises(ConfigError, match=r"output.devise: unknown key; did you mean 'device'"):
        load_config({**base, "output": {"devise": "cuda"}})
    with pytest.raises(ConfigError, match="task names must differ"):
        load_config({**base, "tasks": [{"name": "t", "data": "x.jsonl"}] * 2})
    per_task = load_config({**base, "tasks": [{"name": "t", "data": "x.jsonl", "fitness": {"estimator": "full"}}]})
    assert per_task.fitness_for(per_task.tasks[0]).estimator == "full"


def test_demo_paths_resolve_into_the_demo_family(demo_family, monkeypatch):
    monkeypatch.setenv("EVOMERGE_DEMO_DIR", str(demo_family))
    config = load_config("examples/calibrate-demo.yaml")
    assert config.models.base == str(demo_family / "models" / "base")
    assert config.tasks[0].search == str(demo_family / "data/mix/search.jsonl")
    assert chosen_selection(config.fitness) == "random" and config.fitness.strata == "skill"


def test_paths_in_a_config_file_resolve_against_its_folder(tmp_path, monkeypatch, caplog):
    """They resolved against the current directory, so a config ran only from one place."""
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "models" / "base").mkdir(parents=True)
    (project / "data" / "qa.jsonl").write_text('{"question": "1+1=", "answer": "2"}\n')
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "legacy").mkdir(parents=True)
    (elsewhere / "legacy" / "t.yaml").write_text("task: t\n")
    config_file = project / "exp.yaml"
    config_file.write_text(
        "models: {base: models/base, endpoints: [org/math-7b, models/base]}\n"
        "tasks:\n"
        "  - {name: qa, data: data/qa.jsonl}\n"
        "  - {name: missing, search: data/nope.jsonl, test: data/nope2.jsonl}\n"
        "  - {name: old, lm_eval: legacy/t.yaml}\n"
        "  - {name: named, lm_eval: gsm8k}\n"
        "search: {algorithm: NSGA2}\n"
    )
    monkeypatch.chdir(elsewhere)
    with caplog.at_level("WARNING", logger="evomerge.loader"):
        config = load_config(config_file)
    assert config.models.base == str(project / "models" / "base")
    assert config.models.endpoints == ["org/math-7b", str(project / "models" / "base")]  # a hub id stays
    qa, missing, old, named = config.tasks
    assert qa.data == str(project / "data" / "qa.jsonl")
    assert missing.search == str(project / "data" / "nope.jsonl")  # its error will name the full path
    assert old.lm_eval == str(elsewhere / "legacy" / "t.yaml") and "relative to its folder" in caplog.text
    assert named.lm_eval == "gsm8k"
    text = load_config(config_file.read_text(), resolve_demo=False)  # YAML text: the current directory, as before
    assert text.tasks[0].data == "data/qa.jsonl"


@pytest.mark.parametrize("true_dim", [1, 2])
def test_auto_dimension_finds_the_simulated_one(true_dim):
    """Items load on ``true_dim`` separate skills; 30 extra respondents, 10 of them for validation."""
    rng = np.random.default_rng(0)
    theta = rng.normal(size=(33, true_dim))
    a = np.zeros((300, true_dim))
    for d in range(true_dim):
        block = slice(d * 300 // true_dim, (d + 1) * 300 // true_dim)
        a[block, d] = rng.uniform(1, 2, size=300 // true_dim)
    scores = (rng.random((33, 300)) < expit(theta @ a.T - rng.normal(0, 1, 300))).astype(float)
    kinds = ["base", "endpoint", "endpoint"] + ["extra"] * 30
    who = tuple(Respondent(f"r{i}", k, single_model("m")) for i, k in enumerate(kinds))  # type: ignore[arg-type]
    assert IRTFits(Responses(who, tuple(map(str, range(300))), scores)).chosen_dim == true_dim


def test_docs_config_reference_is_generated_from_the_schema():
    """docs/config.md is config_reference()'s output: regenerate it when the schema changes
    (python -c "from evomerge.loader import config_reference; print(config_reference(), end='')" > docs/config.md)."""
    from pathlib import Path

    from evomerge.loader import config_reference

    doc = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert doc.read_text() == config_reference()


def test_respondent_scores_are_kept_apart_per_pinned_revision():
    """Hub ids are fingerprinted by name, so the shared respondent cache keys the revision too."""
    import torch

    from evomerge.fitness.build import scoring_context

    base = {"models": {"base": "org/base", "endpoints": ["org/a", "org/b"]}, "tasks": [{"name": "t", "data": "x"}]}
    plain = load_config(base, resolve_demo=False)
    pinned = load_config({**base, "models": {**base["models"], "revision": "v2"}}, resolve_demo=False)
    model = torch.nn.Linear(2, 2)
    assert scoring_context(plain, model) == "cpu:torch.float32"  # unchanged: existing caches stay valid
    assert scoring_context(pinned, model) != scoring_context(plain, model)
