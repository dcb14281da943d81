"""The experiment config's shape: one pydantic section per package (``models``, ``merge``,
``tasks``, ``fitness``, ``search``, ``output``), each refusing unknown keys, with the rules
that need nothing but the config itself.

It imports nothing of evomerge's but its errors, so anything may import it. The rules that
need the plug-ins (a registered scorer, what an estimator or an algorithm accepts) and the
loading itself (YAML, ``--set``, relative and ``demo:`` paths) are in ``loader``.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import EvomergeError

DEMO_PREFIX = "demo:"
"""A path that starts with it is inside the demo model family (``demo:models/add``); the
loader resolves it, building the family on first use, so such configs run anywhere."""


#: numpy's and torch's seeds are 32-bit: a seed outside 0..SEED_MAX fails inside the search.
SEED_MAX = 2**32 - 1


def _names_of(kind: str) -> dict[str, Any]:
    """Marks a field whose value names a ``kind`` registry entry; the loader's schema lists
    what is registered there (the config itself imports no registry)."""
    return {"registry": kind}


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
    tier: Literal["auto", "device", "host", "hybrid", "disk"] = Field(
        "auto",
        description="Where the models' tensors stay during a run: device (fastest), host (CPU RAM, copied to a "
        "GPU per tensor), hybrid (the largest stacks that fit in RAM, the rest read per candidate), disk (read "
        "per candidate); auto: the fastest that fits memory_budget.",
    )
    memory_budget: int | str | None = Field(
        None,
        description="Memory the merge device may use, e.g. 24GB or 80GiB; default: its free memory at start.",
    )
    tokenizer_source: str | None = Field(
        None,
        description="Where the models' vocabularies differ: base, or one of the models, whose tokenizer the "
        "merges use; embeddings and lm_head are aligned by token (mergekit's tokenizer_source).",
    )


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
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seeds the split of data into search and test.")
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
    respondents: int = Field(12, ge=0, description="Random merges scored to fit the IRT model.")
    respondent_items: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Share of the search items each random merge and checkpoint respondent is scored on, a "
        "different share each (the base and the endpoints are scored on every item); the IRT fit treats the rest "
        "as missing. 1: every item. evomerge calibrate shows the fidelity at 1 and at this share.",
    )
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
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seeds the respondents and the anchors.")

    @field_validator("dim")
    @classmethod
    def _positive(cls, dim: int | str) -> int | str:
        if isinstance(dim, int) and dim < 1:
            raise ValueError("dim must be at least 1, or auto")
        return dim


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
        json_schema_extra=_names_of("generation engine"),
    )

    trackers: list[str] = Field(
        default_factory=list,
        description="Experiment trackers to log evaluations, generations and the test table to (listed below; "
        "each is an extra: pip install 'evomerge[wandb]'). They write inside the run directory by default.",
    )
    tracker_project: str = Field("evomerge", description="The trackers' project (wandb) or experiment (MLflow).")

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
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seeds the algorithm and the merges' random parts (DARE).")

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must differ (they name the objectives): {names}")
        if self.search.space == "path":
            if self.search.executor != "local":
                raise ValueError("search.space path runs on the local executor (search.executor: local)")
            low, high = self.search.path.scale_range
            if not 0 < low <= 1 <= high:
                raise ValueError(f"search.path.scale_range {[low, high]}: choose 0 < low <= 1 <= high")
        source, models = self.merge.tokenizer_source, [*self.models.endpoints, *filter(None, [self.models.base])]
        if source is not None and source != "base" and source not in models:
            raise ValueError(f"merge.tokenizer_source {source!r}: use base or one of the models {models}")
        if self.tasks and not any(t.objective for t in self.tasks):
            raise ValueError("every task is a check (objective: false): make at least one task an objective")
        return self

    def fitness_for(self, task: TaskConfig) -> FitnessConfig:
        return task.fitness or self.fitness


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


SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("models", ModelsConfig),
    ("merge", MergeConfig),
    ("tasks[]", TaskConfig),
    ("fitness", FitnessConfig),
    ("search", SearchConfig),
    ("search.ray", RayConfig),
    ("search.path", PathConfig),
    ("output", OutputConfig),
]
"""Each section's dotted place in the YAML and its model, in the reference's order."""
