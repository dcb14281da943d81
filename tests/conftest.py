"""Shared fixtures. The demo family is built once per machine and cached on disk,
keyed by the builder's version (CI points EVOMERGE_CACHE into its clean clone)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# Tests never touch the Hugging Face hub: everything they use is built or written locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` on 2 cores: one thread per worker (and per process it starts), not two
    # each; oversubscribed, torch's threads spin against each other and the suite is slower.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = "1"

import pytest

from evomerge.demo import build_demo_family, read_manifest


def session_folder(tmp_path_factory, name: str) -> Path:
    """A folder the whole test session shares: with ``pytest -n`` (xdist), every worker's."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = shared / name
    folder.mkdir(exist_ok=True)
    return folder


def pytest_configure(config) -> None:
    """Under ``pytest -n``: the demo family is built here, before the workers start, with
    this process's threads. A worker has one thread, and a family trained on one thread is
    not bit for bit the one a user builds (the documented numbers are that one's)."""
    if getattr(config.option, "numprocesses", None) and not os.environ.get("PYTEST_XDIST_WORKER"):
        build_demo_family()


@pytest.fixture(scope="session", autouse=True)
def _session_respondent_cache(tmp_path_factory) -> Iterator[None]:
    """Respondents' scores are shared by the whole test session (runs reuse them across runs
    by default, as users' do), never with the machine's own cache. A test that counts the
    scoring asks for ``own_respondents``."""
    saved = os.environ.get("EVOMERGE_RESPONDENTS_CACHE")
    os.environ["EVOMERGE_RESPONDENTS_CACHE"] = str(session_folder(tmp_path_factory, "respondents"))
    yield
    if saved is None:
        os.environ.pop("EVOMERGE_RESPONDENTS_CACHE", None)
    else:
        os.environ["EVOMERGE_RESPONDENTS_CACHE"] = saved


@pytest.fixture
def own_respondents(tmp_path_factory, monkeypatch) -> Path:
    """A respondents' cache of this test's own: what other tests scored is not reused."""
    cache = tmp_path_factory.mktemp("own-respondents")
    monkeypatch.setenv("EVOMERGE_RESPONDENTS_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def demo_family() -> Path:
    return build_demo_family()


@pytest.fixture(scope="session")
def demo_manifest(demo_family: Path) -> dict:
    return read_manifest(demo_family)


@pytest.fixture(scope="session")
def finished_run(demo_family: Path, tmp_path_factory):
    """The small demo experiment (``helpers.small_config``), run once for the session (the
    first worker to ask runs it; the others open the finished run); tests read it (or copy
    it) and never write into it."""
    from filelock import FileLock

    from evomerge.loader import load_config
    from evomerge.search.experiment import run_experiment
    from helpers import small_config

    folder = session_folder(tmp_path_factory, "finished")
    config = load_config(small_config(demo_family))
    with FileLock(folder / ".lock"):
        return run_experiment(config, folder / "a", resume=(folder / "a" / "run.sqlite").exists())


def _gpt2_family(root: Path, demo_family: Path, *, quantized: bool) -> Path:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(demo_family / "models" / "base")
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=64, n_layer=3, n_head=4)
    torch.manual_seed(0)
    base = GPT2LMHeadModel(config)
    if quantized:  # weights on a 1/256 grid: base + delta - base is exact in fp32
        with torch.no_grad():
            for p in base.parameters():
                p.copy_(torch.round(p * 256) / 256)
    for name in ("base", "a", "b", "c"):
        model = GPT2LMHeadModel(config)
        model.load_state_dict(base.state_dict())
        if name != "base":
            with torch.no_grad():
                for p in model.parameters():
                    if quantized:  # 9 magnitudes, a third of them zero: heavy ties at every cut
                        p.add_(torch.randint(-4, 5, p.shape) / 64 * (torch.rand(p.shape) < 0.7))
                    else:
                        p.add_(0.02 * torch.randn_like(p))
        model.save_pretrained(root / "models" / name)
        tokenizer.save_pretrained(root / "models" / name)
    return root


@pytest.fixture(scope="session")
def gpt2_family(tmp_path_factory, demo_family) -> Path:
    """A second architecture for merge parity: a random-weight GPT-2 (tied embeddings,
    ``transformer.h.N`` names) and three "fine-tunes" (base plus small random task
    vectors), saved as safetensors under ``models/{base,a,b,c}``."""
    return _gpt2_family(tmp_path_factory.mktemp("gpt2"), demo_family, quantized=False)


@pytest.fixture(scope="session")
def tied_family(tmp_path_factory, demo_family) -> Path:
    """The GPT-2 family with task vectors of few distinct magnitudes, as bf16 fine-tunes
    have: many entries tie at any magnitude cut, so a mask depends on the sort's order."""
    return _gpt2_family(tmp_path_factory.mktemp("tied"), demo_family, quantized=True)


@pytest.fixture(scope="session")
def extended_vocab(tmp_path_factory, demo_family) -> Path:
    """The `add` specialist with two added tokens (and embedding rows for them)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("vocab") / "add_ext"
    model = AutoModelForCausalLM.from_pretrained(demo_family / "models" / "add")
    tokenizer = AutoTokenizer.from_pretrained(demo_family / "models" / "add")
    tokenizer.add_tokens(["<x1>", "<x2>"])
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    torch.manual_seed(1)
    with torch.no_grad():
        model.get_input_embeddings().weight[-2:] = torch.randn(2, model.config.hidden_size)
        model.get_output_embeddings().weight[-2:] = torch.randn(2, model.config.hidden_size)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


#: The slowest modules (about 190, 130, 115, 60, 55 and 55 s of a 2-worker run's 1,000),
#: handed out first under ``pytest -n`` so that the short ones fill in around them.
_SLOWEST_FIRST = (
    "tests/test_gui.py",
    "tests/test_search_run.py",
    "tests/test_ray.py",
    "tests/test_ray_cluster.py",
    "tests/test_calibrate.py",
    "tests/test_readme.py",
    "tests/test_examples.py",
)


def pytest_collection_modifyitems(config, items) -> None:
    """The slowest modules first (each keeps its tests' order); only under ``pytest -n``."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {module: i for i, module in enumerate(_SLOWEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


#: Modules that must not run beside each other under ``pytest -n``: a local Ray beside a
#: started Ray cluster would join it (``ray.init()`` finds a cluster this machine started).
_SAME_WORKER = {"tests/test_ray.py": "ray", "tests/test_ray_cluster.py": "ray"}
#: Single tests elsewhere that start a local Ray: they run on the Ray modules' worker.
_STARTS_RAY = {"tests/test_conformance.py::test_every_executor_keeps_the_contract[ray]"}


def pytest_xdist_make_scheduler(config, log):
    """Under ``pytest -n``: each test module runs whole on one worker (its module fixtures,
    such as the GUI server, are made once and its tests keep their order), the Ray modules
    on the same one."""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid in _STARTS_RAY:
                return "ray"
            module = nodeid.split("::", 1)[0]
            return _SAME_WORKER.get(module, module)

    config.option.loadscopereorder = False  # the modules' order below, the slowest first
    return ModuleScheduling(config, log)
