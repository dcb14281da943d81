"""The experiment config: one pydantic schema for the YAML, the CLI and the API.

Sections mirror the packages: ``models``, ``merge``, ``tasks`` (one objective each),
``fitness``, ``search`` and ``output``. Every
section refuses unknown keys, and ``load_config`` turns pydantic's errors into
messages that name the key and suggest the nearest valid one.

A path that starts with ``demo:`` is inside the demo model family (``demo:models/add``,
``demo:data/mix/search.jsonl``), which is built on first use; configs that use it run
on any machine without editing.
"""

from __future__ import annotations

import copy
import difflib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import EvomergeError, MergeConfigError

if TYPE_CHECKING:
    from .registry import Registry

log = logging.getLogger(__name__)

DEMO_PREFIX = "demo:"


def _registries() -> dict[str, Registry[Any]]:
    """The registries config names are looked up in (imported late: they import torch)."""
    from .evaluate.scorers import SCORERS
    from .fitness.anchors import SELECTIONS
    from .fitness.estimators import ESTIMATORS
    from .search.executors import EXECUTORS
    from .search.trackers import TRACKERS

    return {
        "scorer": SCORERS,
        "estimator": ESTIMATORS,
        "selection": SELECTIONS,
        "executor": EXECUTORS,
        "tracker": TRACKERS,
    }


def _registered(name: str | None, info: ValidationInfo) -> str | None:
    """A field validator: ``name`` if the registry of the field's kind (the field's own
    name: scorer, estimator, ...) has it; else an error with "did you mean"."""
    if name is not None:
        try:
            _registries()[str(info.field_name)].get(name)
        except EvomergeError as err:
            raise ValueError(str(err)) from None
    return name


def _names_of(kind: str) -> Any:
    """A JSON-schema hook listing what the ``kind`` registry holds when the schema is made."""

    def extra(schema: dict[str, Any]) -> None:
        names = _registries()[kind].names()
        target = next((s for s in schema.get("anyOf", []) if s.get("type") == "string"), schema)
        target["enum"] = names

    return extra


def _engine_names() -> list[str]:
    from .evaluate.generation import engine_names

    return engine_names()


class ConfigError(EvomergeError):
    """An experiment config that does not validate. ``problems`` holds (key, message)
    pairs, the key dotted as in the YAML, so that a form can show each next to its field."""

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ModelsConfig(_Section):
    """The base (task vectors are taken against it) and the endpoints to merge."""

    base: str | None = Field(None, description="The model the endpoints were fine-tuned from (dir or hub id).")
    endpoints: list[str] = Field(min_length=1, description="The models to merge (dirs or hub ids).")
    allow_pickle: bool = Field(False, description="Also read pickled .bin checkpoints (trusted sources only).")
    revision: str | dict[str, str] | None = Field(
        None,
        description="Hub ids only: a branch, tag or commit for every model, or {hub id: revision}; default: main.",
    )
    trust_remote_code: bool = Field(
        False,
        description="Run a hub repository's own model code (config.json with auto_map). Off: such a model is "
        "refused. Opt in only for sources you trust.",
    )

    @model_validator(mode="after")
    def _revisions_name_models(self) -> ModelsConfig:
        if isinstance(self.revision, dict):
            unknown = sorted(set(self.revision) - {*self.endpoints, *([self.base] if self.base else [])})
            if unknown:
                raise ValueError(f"revision names {unknown}, which are not among the models")
        return self


class MergeConfig(_Section):
    """The merge method and the parameters every candidate shares."""

    method: str = Field("task_arithmetic", description="Any mergekit method, or layer_select.")
    parameters: dict[str, Any] = Field(default_factory=dict, description="Values fixed for every candidate.")
    tier: Literal["auto", "device", "host", "disk"] = Field(
        "auto",
        description="Where the models' tensors stay during a run: device (fastest), host (CPU RAM, copied to a "
        "GPU per tensor), disk (read per candidate); auto: the fastest that fits memory_budget.",
    )
    memory_budget: int | str | None = Field(
        None,
        description="Memory the merge device may use, e.g. 24GB or 80GiB; default: its free memory at start.",
    )

    @field_validator("memory_budget")
    @classmethod
    def _size(cls, value: int | str | None) -> int | str | None:
        from .merge.memory import parse_size

        if value is not None:
            try:
                parse_size(value)
            except MergeConfigError as err:
                raise ValueError(str(err)) from None
        return value

    @field_validator("method")
    @classmethod
    def _known(cls, method: str) -> str:
        from .merge.methods import get_method

        try:
            get_method(method)
        except MergeConfigError as err:
            raise ValueError(str(err)) from None
        return method


class TaskConfig(_Section):
    """One objective's data and scorer: ``data`` (one file, split into search and test by
    ``test_fraction``), explicit ``search`` and ``test`` files, or an ``lm_eval`` task
    (its documents split the same way, scored by lm-eval's own metric)."""

    name: str = Field(description="The objective's name (a column of evaluations.csv).")
    data: str | None = Field(None, description="One JSONL/CSV file, split into search and test.")
    search: str | None = Field(None, description="The search items' file (with test).")
    test: str | None = Field(None, description="The held-out test items' file (with search).")
    lm_eval: str | None = Field(None, description="An lm-eval task: a registered name (gsm8k) or a task YAML.")
    metric: str | None = Field(None, description="The lm-eval metric to score by; default: the task's first.")
    test_fraction: float = Field(0.5, gt=0, lt=1, description="Share of data (or lm_eval documents) held out.")
    fewshot: int = Field(0, ge=0, description="Search items put into every prompt as examples (never scored).")
    scorer: str = Field(
        "generation",
        description="How each item is scored: a registered scorer (listed below).",
        json_schema_extra=_names_of("scorer"),
    )
    extractor: Literal["number", "exact", "regex", "choice"] = Field(
        "number", description="How a generated answer is read: the last number, the text, a regex group, a letter."
    )
    pattern: str | None = Field(None, description="The regex extractor's pattern (its first group is the answer).")
    strict: bool = Field(False, description="exact: compare the raw stripped text, not a normalised one.")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Which column of the data holds what, for files that name them otherwise: "
        "{question: problem, answer: solution} (keys: question, answer, choices, label, id).",
    )
    template: str = Field("{question}", description="The prompt; fields of the item in braces.")
    max_new_tokens: int = Field(32, ge=1, description="Generation length.")
    batch_size: int | Literal["auto"] = Field(64, description="Items per forward pass; auto backs off on OOM.")
    language: str | None = Field(
        None,
        description="generation: count an answer right only if it is also in this language (ISO code, e.g. ja); "
        "needs evomerge[lang].",
    )
    seed: int = Field(0, description="Seeds the split of data into search and test.")
    fitness: FitnessConfig | None = Field(None, description="This objective's estimator; default: the fitness section.")
    objective: bool = Field(
        True,
        description="false: a check, not an objective: scored on its test split in the held-out table only, "
        "never searched on (no anchors, no respondents). Shows what a merge keeps or loses beside its target.",
    )

    @field_validator("name")
    @classmethod
    def _not_a_path(cls, name: str) -> str:
        """A task's name names files in the run directory (its respondents' scores)."""
        if not re.fullmatch(r"[^/\\\x00-\x1f]+", name) or name.startswith(".") or name.strip() != name:
            raise ValueError(
                f"{name!r}: a task name names files in the run directory, so it may not contain / or \\, "
                "control characters, start with '.', or begin or end with a space; e.g. gsm8k-ja"
            )
        return name

    _known_scorer = field_validator("scorer")(_registered)

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, columns: dict[str, str]) -> dict[str, str]:
        from dataclasses import fields

        from .evaluate.tasks import Columns

        known = [f.name for f in fields(Columns)]
        for key in columns:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"{key!r} is not a column role (roles: {', '.join(known)}){hint}")
        return columns

    @field_validator("language")
    @classmethod
    def _language_code(cls, code: str | None) -> str | None:
        from .evaluate.language import LanguageCheckError, check_language_code

        try:
            return None if code is None else check_language_code(code)
        except LanguageCheckError as err:
            raise ValueError(str(err)) from None

    @model_validator(mode="after")
    def _one_source(self) -> TaskConfig:
        given = [self.data is not None, self.search is not None or self.test is not None, self.lm_eval is not None]
        if sum(given) != 1:
            raise ValueError(
                "give one of: data (one file, split for you), search and test (two files), or lm_eval (a task)"
            )
        if given[1] and (self.search is None or self.test is None):
            raise ValueError("search and test go together; give both files")
        if self.metric is not None and self.lm_eval is None:
            raise ValueError("metric is for lm_eval tasks; other tasks are scored by their scorer")
        if self.extractor == "regex" and not self.pattern:
            raise ValueError("extractor regex needs a pattern: a regex whose first group is the answer")
        if self.language is not None:
            from .evaluate.scorers import SCORERS

            if not getattr(SCORERS[self.scorer], "generates", False) or self.lm_eval is not None:
                raise ValueError(
                    f"language checks generated answers: scorer {self.scorer} does not generate (not lm_eval either)"
                )
        return self


class FitnessConfig(_Section):
    """How a candidate's score is estimated from few items (``fitness`` package)."""

    estimator: str = Field(
        "full",
        description="A registered estimator (listed below); full: every search item, the others: anchors only.",
        json_schema_extra=_names_of("estimator"),
    )
    anchors: int | None = Field(None, ge=1, description="Items evaluated per candidate (not for full).")
    selection: str | None = Field(
        None,
        description="How anchors are picked (listed below); default: the estimator's own (random, or kmeans_irt "
        "for estimators with a weighted part). evomerge calibrate compares them.",
        json_schema_extra=_names_of("selection"),
    )
    respondents: int = Field(12, ge=0, description="Random merges scored in full to fit the IRT model.")
    reuse_respondents: bool = Field(
        True,
        description="Reuse respondents' scores from earlier runs over the same checkpoints (by file names, "
        "sizes and times), task, scorer settings and device ($EVOMERGE_CACHE/respondents); false: always score.",
    )
    checkpoints: list[str] = Field(default_factory=list, description="Extra respondent checkpoints.")
    dim: int | Literal["auto"] = Field(
        "auto", description="Dimensions of the IRT abilities; auto: chosen on validation respondents."
    )
    strata: str | None = Field(None, description="Item field that stratified anchors balance (else difficulty).")
    lam: float | None = Field(
        None, alias="lambda", ge=0, le=1, description="gp-IRT/gmp-IRT weight; default: chosen on validation."
    )
    seed: int = Field(0, description="Seeds the respondents and the anchors.")

    _known_names = field_validator("estimator", "selection")(_registered)

    @field_validator("dim")
    @classmethod
    def _positive(cls, dim: int | str) -> int | str:
        if isinstance(dim, int) and dim < 1:
            raise ValueError("dim must be at least 1, or auto")
        return dim

    @model_validator(mode="after")
    def _anchors_given(self) -> FitnessConfig:
        from .fitness.estimators import ESTIMATORS

        if ESTIMATORS[self.estimator].default_selection != "all" and self.anchors is None:
            raise ValueError(f"estimator {self.estimator} needs anchors: the number of items per candidate")
        return self

    @property
    def chosen_selection(self) -> str:
        from .fitness.estimators import ESTIMATORS

        default = ESTIMATORS[self.estimator].default_selection
        return default if default == "all" else self.selection or default


class RayConfig(_Section):
    """Where and how many Ray workers evaluate candidates (with ``executor: ray``)."""

    address: str = Field(
        "local", description="local (a Ray started in this process), auto (a running `ray start`), or ray://host:port."
    )
    workers: int = Field(2, ge=1, description="Ray actors, each with its own live model and merge cache.")
    gpus_per_worker: float = Field(0, ge=0, description="GPUs each worker takes (0: it merges and scores on CPU).")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs each worker takes (its torch threads).")
    retries: int = Field(2, ge=0, description="Times a candidate is sent again after its worker died.")


class PathConfig(_Section):
    """The layer-path space (``search.space: path``): which layers, of which models, in which
    order the hidden state flows through. The bank is the endpoints' layers (model A's
    first: the first endpoint, or ``from_run``'s winner), repeated ``repeats`` times."""

    from_run: str | None = Field(
        None,
        description="Model A is this finished run's winner (RUN_DIR/best): parameter space, then layer paths. "
        "Its layers come first in the bank, then the endpoints'.",
    )
    repeats: int = Field(2, ge=1, le=8, description="Times the layer bank repeats in the slot sequence.")
    scales: Literal["matrix", "slot", "none"] = Field(
        "matrix",
        description="Stream scales: one per ordered pair of bank layers (matrix, as in the paper), one per slot, "
        "or none (all 1).",
    )
    scale_range: tuple[float, float] = Field((0.5, 1.5), description="The range a scale is searched in.")
    max_length: int | None = Field(None, ge=1, description="At most this many layers on a path.")
    keep_first: int = Field(0, ge=0, description="Model A's first layers, always at the path's start.")
    keep_last: int = Field(0, ge=0, description="Model A's last layers, always at the path's end.")


class SearchConfig(_Section):
    """The algorithm, its budget, and the space it searches (``search`` package)."""

    algorithm: str = Field("GA", description="A pymoo algorithm by name: GA, DE, CMAES, NSGA2, MOEAD, ...")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed to the algorithm's constructor; for GA also crossover_rate, mutation_rate, elitism_rate.",
    )
    population_size: int | None = Field(
        16, ge=1, description="Candidates per generation (where the algorithm has one)."
    )
    generations: int | None = Field(10, ge=1, description="Stop after this many generations (ask/tell rounds).")
    max_evaluations: int | None = Field(None, ge=1, description="Stop once this many candidates are evaluated.")
    max_seconds: float | None = Field(None, gt=0, description="Stop after this much wall-clock time in the search.")
    patience: int | None = Field(None, ge=1, description="Stop after this many generations without improvement.")
    granularity: Literal["global", "module", "layer"] = Field(
        "global", description="One gene per parameter and model for all tensors, per module kind, or per layer group."
    )
    group_size: int = Field(1, ge=1, description="Layers per group, with granularity layer.")
    params: list[str] | None = Field(None, description="Parameters to search; default: the method's usual ones.")
    bounds: dict[str, tuple[float, float]] = Field(default_factory=dict, description="Search range per parameter.")
    allow_negative_weights: bool = Field(False, description="Weights range over [-1, 1] instead of [0, 1].")
    frozen: dict[str, float] = Field(default_factory=dict, description="Gene name -> value, not searched.")
    on_error: Literal["stop", "skip"] = Field(
        "stop",
        description="A candidate whose merge or scoring raises: stop the run (resume retries it) or skip it "
        "(stored as FAIL, told to the algorithm as the worst score). Out-of-memory and storage errors always stop.",
    )
    executor: str = Field(
        "local",
        description="Where candidates are merged and scored: a registered executor (listed below).",
        json_schema_extra=_names_of("executor"),
    )

    ray: RayConfig = Field(default_factory=RayConfig, description="The Ray workers (executor: ray).")
    space: Literal["recipe", "path"] = Field(
        "recipe",
        description="What a candidate is: a merge recipe (parameter space) or a layer path (data-flow space, "
        "see search.path).",
    )
    path: PathConfig = Field(default_factory=PathConfig, description="The layer-path space (space: path).")

    _known_executor = field_validator("executor")(_registered)

    @field_validator("algorithm")
    @classmethod
    def _known_algorithm(cls, name: str) -> str:
        from .search.algorithms import AlgorithmError, canonical_algorithm

        try:
            return canonical_algorithm(name)  # "nsga2", "NSGA-II" -> NSGA2: the stored config has one spelling
        except AlgorithmError as err:
            raise ValueError(str(err)) from None

    @model_validator(mode="after")
    def _terminates(self) -> SearchConfig:
        if self.generations is None and self.max_evaluations is None and self.max_seconds is None:
            raise ValueError("give a budget: generations, max_evaluations or max_seconds")
        return self


class OutputConfig(_Section):
    """Where the run is kept and where it computes."""

    run_dir: str | None = Field(None, description="Where the run is stored; default runs/<the config file's name>.")
    save_best: bool = Field(True, description="Write the best merge as an HF checkpoint to RUN_DIR/best.")
    device: str = Field("cpu", description="cpu, cuda or cuda:N: where candidates are merged and evaluated.")
    generation: str = Field(
        "auto",
        description="The generation engine: eager (evomerge's decoding loop), compiled (static cache, "
        "torch.compile, CUDA graphs on CUDA), hf (transformers' generate), or auto: compiled on CUDA, "
        "eager elsewhere.",
        json_schema_extra=lambda schema: schema.update(enum=list[Any](_engine_names())),
    )

    trackers: list[str] = Field(
        default_factory=list,
        description="Experiment trackers to log evaluations, generations and the test table to (listed below; "
        "each is an extra: pip install 'evomerge[wandb]'). They write inside the run directory by default.",
    )
    tracker_project: str = Field("evomerge", description="The trackers' project (wandb) or experiment (MLflow).")

    @field_validator("trackers")
    @classmethod
    def _known_trackers(cls, names: list[str]) -> list[str]:
        from .search.trackers import TRACKERS

        for name in names:
            try:
                TRACKERS.get(name)
            except EvomergeError as err:
                raise ValueError(str(err)) from None
        return names

    @field_validator("generation")
    @classmethod
    def _an_engine(cls, name: str) -> str:
        valid = _engine_names()
        if name not in valid:
            from .registry import unknown_name

            raise ValueError(unknown_name("generation engine", name, valid))
        return name

    @field_validator("device")
    @classmethod
    def _a_device(cls, device: str) -> str:
        if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
            raise ValueError(f"device {device!r}: use cpu, cuda or cuda:N (the GPU's index), or mps")
        return device


TaskConfig.model_rebuild()


class ExperimentConfig(_Section):
    models: ModelsConfig
    merge: MergeConfig = Field(default_factory=MergeConfig)
    tasks: list[TaskConfig] = Field(
        default_factory=list,
        description="One objective each; or a check (objective: false), scored in the test table only.",
    )
    fitness: FitnessConfig = Field(default_factory=FitnessConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    seed: int = Field(0, description="Seeds the algorithm and the merges' random parts (DARE).")

    @model_validator(mode="after")
    def _distinct_tasks(self) -> ExperimentConfig:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must differ (they name the objectives): {names}")
        from .evaluate.scorers import SCORERS
        from .fitness.build import needs_respondents
        from .merge.methods import get_method
        from .search.algorithms import AlgorithmError, make_algorithm

        recipes = self.search.space == "recipe"
        if recipes and get_method(self.merge.method).base == "required" and self.models.base is None:
            raise ValueError(
                f"merge.method {self.merge.method} merges task vectors taken against a base model: set models.base "
                "(the model the endpoints were fine-tuned from)"
            )
        searched = [t for t in self.tasks if t.objective]
        if self.search.space == "path":
            _check_path_space(self)
        if self.tasks and not searched:
            raise ValueError("every task is a check (objective: false): make at least one task an objective")
        if searched:  # the algorithm built now, with its options: a bad option fails here, not mid-run
            s = self.search
            try:
                make_algorithm(s.algorithm, len(searched), s.options, population_size=s.population_size)
            except AlgorithmError as err:
                raise ValueError(f"search.{err.key}: {err}") from None
        for i, task in enumerate(self.tasks):
            fitness = self.fitness_for(task)
            binary = task.lm_eval is not None or SCORERS[task.scorer].binary
            if task.objective and not binary and needs_respondents(fitness, has_strata=True):
                raise ValueError(
                    f"tasks.{i} ({task.name}): scorer {task.scorer} gives a value per item, not a right/wrong score; "
                    f"estimator {fitness.estimator} with {fitness.chosen_selection} anchors fits IRT on right/wrong "
                    "scores. Use estimator full, or mean with random anchors, for this task."
                )
        return self

    def fitness_for(self, task: TaskConfig) -> FitnessConfig:
        return task.fitness or self.fitness


def _check_path_space(config: ExperimentConfig) -> None:
    """What a layer-path search cannot do (yet), said before anything runs."""
    from .fitness.build import needs_respondents

    if config.search.executor != "local":
        raise ValueError("search.space path runs on the local executor (search.executor: local)")
    for i, task in enumerate(config.tasks):
        fitness = config.fitness_for(task)
        if task.objective and needs_respondents(fitness, has_strata=True):
            raise ValueError(
                f"tasks.{i} ({task.name}): a layer-path search has no random merges to calibrate estimator "
                f"{fitness.estimator} with {fitness.chosen_selection} anchors on: use estimator full, or mean "
                "with random anchors"
            )
    low, high = config.search.path.scale_range
    if not 0 < low <= 1 <= high:
        raise ValueError(f"search.path.scale_range {[low, high]}: choose 0 < low <= 1 <= high")


def load_config(
    source: str | Path | dict[str, Any],
    overrides: Sequence[str] = (),
    *,
    resolve_demo: bool = True,
    base_dir: Path | str | None = None,
) -> ExperimentConfig:
    """A validated config from a YAML file, YAML text or a dict, ``demo:`` paths resolved.

    ``overrides`` are ``dotted.key=value`` strings (the CLI's ``--set``); values are YAML,
    list items are addressed by index (``tasks.0.anchors=45``). Relative input paths
    (models, data files, task YAMLs) resolve against ``base_dir``: by default the config
    file's folder, and nothing for YAML text or a dict (the current directory).
    """
    if isinstance(source, dict):
        raw = copy.deepcopy(source)
    else:
        if isinstance(source, Path) or ("\n" not in source and source.endswith((".yaml", ".yml"))):
            path = Path(source)
            if not path.is_file():
                raise ConfigError(f"config file {path} not found")
            source = path.read_text()
            base_dir = base_dir or path.parent
        try:
            raw = yaml.safe_load(source)
        except yaml.YAMLError as err:
            raise ConfigError(f"the config is not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError("a config is a YAML mapping with sections models, merge, tasks, fitness, search, output")
    for override in overrides:
        apply_override(raw, override)
    if base_dir is not None:
        resolve_relative_paths(raw, Path(base_dir))
    try:
        config = ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        problems = config_problems(err)
        raise ConfigError(format_problems(problems), problems) from None
    return resolve_demo_paths(config) if resolve_demo else config


def resolve_relative_paths(raw: dict[str, Any], base_dir: Path) -> None:
    """Make ``raw``'s relative input paths absolute against ``base_dir`` (the config's folder),
    so a config runs from any directory and the run stores where its inputs were.

    A path found only from the current directory is taken from there, with a warning (configs
    written before paths followed the config file). A model that exists in neither is left
    as written: it is a hub id. ``output.run_dir`` stays relative to the current directory.
    """

    def fix(value: Any, *, model: bool) -> Any:
        if not isinstance(value, str) or not value or value.startswith(DEMO_PREFIX) or Path(value).is_absolute():
            return value
        beside = base_dir / value
        if beside.exists():
            return str(beside.resolve())
        if Path(value).exists() and base_dir.resolve() != Path.cwd().resolve():
            log.warning(
                "%s: not found beside the config (%s) but in the current directory; taken from there. "
                "Paths in a config are relative to its folder: write %s",
                value,
                base_dir,
                os.path.relpath(Path(value).resolve(), base_dir.resolve()),
            )
            return str(Path(value).resolve())
        return value if model else str(beside.resolve())

    def fix_fitness(section: Any) -> None:
        if isinstance(section, dict) and isinstance(section.get("checkpoints"), list):
            section["checkpoints"] = [fix(c, model=True) for c in section["checkpoints"]]

    models = raw.get("models")
    if isinstance(models, dict):
        if "base" in models:
            models["base"] = fix(models["base"], model=True)
        if isinstance(models.get("endpoints"), list):
            models["endpoints"] = [fix(e, model=True) for e in models["endpoints"]]
    fix_fitness(raw.get("fitness"))
    search = raw.get("search")
    path = search.get("path") if isinstance(search, dict) else None
    if isinstance(path, dict) and isinstance(path.get("from_run"), str):
        path["from_run"] = fix(path["from_run"], model=False)
    for task in raw.get("tasks") or []:
        if not isinstance(task, dict):
            continue
        for key in ("data", "search", "test"):
            if key in task:
                task[key] = fix(task[key], model=False)
        lm_eval = task.get("lm_eval")
        if isinstance(lm_eval, str) and lm_eval.endswith((".yaml", ".yml")):
            task["lm_eval"] = fix(lm_eval, model=False)
        fix_fitness(task.get("fitness"))


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set ``dotted.key=value`` in ``raw``, creating missing sections."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: write key=value, e.g. search.generations=5")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {override!r}: the value is not valid YAML ({err})") from None
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {override!r}: {'.'.join(parts[:i])} has items 0..{len(node) - 1}")
            part = int(part)  # type: ignore[assignment]
        elif not isinstance(node, dict):
            raise ConfigError(f"--set {override!r}: {'.'.join(parts[:i])} is a value, not a section")
        if last:
            node[part] = value
        else:
            if isinstance(node, dict) and part not in node:
                node[part] = {}
            node = node[part]


def config_problems(err: ValidationError) -> list[tuple[str, str]]:
    """(dotted key, message) per problem; unknown keys get a "did you mean"."""
    problems = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "config"
        if e["type"] == "extra_forbidden":
            valid = _fields_at(e["loc"][:-1])
            close = difflib.get_close_matches(str(e["loc"][-1]), valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append((where, f"unknown key{hint} (valid: {', '.join(valid)})"))
        else:
            problems.append((where, e["msg"].removeprefix("Value error, ")))
    return problems


def format_problems(problems: list[tuple[str, str]]) -> str:
    """One line per problem, naming the key."""
    lines = [f"{where}: {message}" for where, message in problems]
    if len(lines) == 1:  # one mistake, one line
        return f"invalid config: {lines[0]}"
    return "invalid config:\n  " + "\n  ".join(lines)


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = ExperimentConfig
    for part in loc:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[str(part)].annotation
        inner = getattr(annotation, "__args__", (annotation,))[0]
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return []
        model = inner
    return [f.alias or name for name, f in model.model_fields.items()]


def resolve_demo_text(text: str) -> str:
    """``demo:`` paths inside a file's text (an lm-eval task YAML's data files) resolved."""
    if DEMO_PREFIX not in text:
        return text
    from .demo import build_demo_family

    return text.replace(DEMO_PREFIX, f"{build_demo_family()}/")


def resolve_demo_paths(config: ExperimentConfig) -> ExperimentConfig:
    """Replace ``demo:`` paths by paths in the demo family, building it if absent."""
    if DEMO_PREFIX not in config.model_dump_json():
        return config
    from .demo import build_demo_family

    root = build_demo_family()

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(DEMO_PREFIX):
            return str(root / value[len(DEMO_PREFIX) :])
        if isinstance(value, list):
            return [fix(v) for v in value]
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        return value

    return ExperimentConfig.model_validate(fix(config.model_dump(by_alias=True)))


def config_reference() -> str:
    """The config reference in Markdown, generated from the schema (docs/config.md is
    this text; a test keeps the file in step with the code)."""
    sections: list[tuple[str, type[BaseModel]]] = [
        ("models", ModelsConfig),
        ("merge", MergeConfig),
        ("tasks[]", TaskConfig),
        ("fitness", FitnessConfig),
        ("search", SearchConfig),
        ("search.ray", RayConfig),
        ("search.path", PathConfig),
        ("output", OutputConfig),
    ]
    lines = [
        "# Config reference",
        "",
        "Generated from the schema (`evomerge.config.config_reference()`; the JSON schema: `evomerge config-schema`).",
        "Unknown keys are errors. `seed` (top level, default 0) seeds the algorithm and DARE's random drops.",
    ]
    for title, model in sections:
        lines += ["", f"## `{title}`", "", " ".join((model.__doc__ or "").split()), ""]
        lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for name, f in model.model_fields.items():
            default = "required" if f.is_required() else repr(f.get_default(call_default_factory=True))
            lines.append(f"| `{f.alias or name}` | {_type_name(f.annotation)} | {default} | {f.description or ''} |")
    from .registry import summary

    lines += [
        "",
        "## Registered names",
        "",
        "What `scorer`, `estimator`, `selection`, `executor` and `trackers` accept.",
    ]
    for kind, registry in _registries().items():
        lines += ["", f"### {kind}", ""]
        lines += [f"- `{name}`: {summary(entry)}" for name, entry in registry.items()]
    return "\n".join(lines) + "\n"


def _type_name(annotation: Any) -> str:
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    text = re.sub(r"Optional\[(.*)\]", r"\1 | None", text.replace("typing.", "").replace(f"{__name__}.", ""))
    return text.replace("Union[int, Literal['auto']]", "int | 'auto'").replace("|", "\\|")
