"""Generation engines on real models: the demo family (Llama) and a random GPT-2.

Every engine must give transformers' greedy ``generate`` token for token; ``eager``
must stop rows at their stop string and drop them from the batch; ``compiled`` must
follow weights that ``merge_into`` overwrites in place after its step was compiled.
"""

from __future__ import annotations

import copy
import functools
import logging

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.config import ConfigError
from evomerge.demo import load_member
from evomerge.demo.family import as_task_items, load_jsonl, task_arithmetic_recipe
from evomerge.evaluate import PromptTemplate
from evomerge.evaluate.compiled import CompiledEngine, prompt_bucket
from evomerge.evaluate.decoding import StopCheck
from evomerge.evaluate.extract import cannot_become
from evomerge.evaluate.generation import GENERATION_ENGINES, generate, generation_ready, resolve_engine, use_engine
from evomerge.loader import load_config
from evomerge.merge import Merger
from evomerge.merge.run import load_live_model


@pytest.fixture(scope="module")
def mix_prompts(demo_family):
    items = as_task_items(load_jsonl(demo_family / "data" / "mix" / "search.jsonl"))
    return [PromptTemplate().render(it) for it in items[:200]]


@pytest.fixture(scope="module")
def members(demo_family):
    return {name: load_member(demo_family, name) for name in ("base", "add", "greek")}


@pytest.mark.parametrize("name", ["base", "add", "greek"])
def test_eager_gives_transformers_generate_token_for_token(members, mix_prompts, name):
    model, tok = members[name]
    reference = generate(model, tok, mix_prompts, max_new_tokens=24, batch_size=64, engine="hf", stop=())
    ours = generate(model, tok, mix_prompts, max_new_tokens=24, batch_size=64, engine="eager", stop=())
    assert ours == reference
    assert len({r for r in reference}) > 20  # real, varied answers, not one string
    # with the stop string, each answer is the reference cut at its first newline
    cut = generate(model, tok, mix_prompts, max_new_tokens=24, batch_size=128, engine="eager")
    assert cut == [r.split("\n", 1)[0] for r in reference]


def test_eager_gives_transformers_generate_on_gpt2(gpt2_family):
    """A second architecture (learned absolute positions, no ``logits_to_keep`` needed)."""
    path = gpt2_family / "models" / "a"
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    prompts = [f"{a}+{b}=" for a in range(3, 40, 3) for b in range(5, 30, 7)]
    reference = generate(model, tok, prompts, max_new_tokens=12, batch_size=16, engine="hf", stop=())
    assert generate(model, tok, prompts, max_new_tokens=12, batch_size=16, engine="eager", stop=()) == reference


def test_stop_strings_end_rows_during_generation_and_finished_rows_leave_the_batch(members, mix_prompts):
    model, tok = members["add"]
    batches: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda m, args, kwargs: batches.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        text = generate(model, tok, mix_prompts, max_new_tokens=24, batch_size=64, engine="eager", stop=("1",))
        eager_steps, eager_rows = len(batches), sum(batches)
        batches.clear()
        reference = generate(model, tok, mix_prompts, max_new_tokens=24, batch_size=64, engine="hf", stop=("1",))
        hf_steps, hf_rows = len(batches), sum(batches)
    finally:
        hook.remove()
    assert text == reference
    assert set(batches) == {64, 8}  # transformers decodes every row of a batch to its end
    assert eager_rows < 0.6 * hf_rows, (eager_rows, hf_rows)  # rows that wrote "1" (or EOS) left
    assert eager_steps < hf_steps  # and a batch ends when its last row writes "1"


def test_compiled_gives_eager_and_follows_weights_merged_in_place(demo_family, mix_prompts):
    """The step is compiled once, for the first candidate; the second candidate's weights
    are written into the same parameters by ``merge_into``, and the compiled step must
    read them (no recompile: one shape, the same tensors)."""
    first = task_arithmetic_recipe(demo_family, {"add": 1.0, "greek": 1.0, "cyrillic": 0.0})
    second = task_arithmetic_recipe(demo_family, {"add": 0.0, "greek": 0.3, "cyrillic": 1.0})
    merger = Merger.for_recipe(first)
    model = load_live_model(merger)
    tok = AutoTokenizer.from_pretrained(demo_family / "models" / "base")
    prompts = mix_prompts[:96]
    engines = ("compiled", "eager")
    merger.merge_into(model, first)
    compiled_first = generate(model, tok, prompts, max_new_tokens=24, batch_size=32, engine="compiled")
    assert compiled_first == generate(model, tok, prompts, max_new_tokens=24, batch_size=32, engine="eager")
    # rows whose answer can no longer be "1..." stop in both engines alike (``settled``)
    settled = [functools.partial(cannot_become, reference="1")] * len(prompts)
    early = [
        generate(model, tok, prompts, max_new_tokens=24, batch_size=32, engine=e, settled=settled) for e in engines
    ]
    assert early[0] == early[1] and early[0] != compiled_first
    assert all(f.startswith(e) for f, e in zip(compiled_first, early[0], strict=True))
    state = CompiledEngine._state[model]
    steps, cache, shape = state.step, state._cache, state.shape
    merger.merge_into(model, second)
    compiled_second = generate(model, tok, prompts, max_new_tokens=24, batch_size=32, engine="compiled")
    eager_second = generate(model, tok, prompts, max_new_tokens=24, batch_size=32, engine="eager")
    assert CompiledEngine._state[model].step is steps  # the same compiled step, not a new one
    assert CompiledEngine._state[model]._cache is cache  # and the same static cache
    assert compiled_second == eager_second
    assert sum(a != b for a, b in zip(compiled_first, compiled_second, strict=True)) > 20  # the weights did change
    # longer prompts (another bucket): one larger cache replaces the first; shorter ones reuse it
    longer = [p * 6 for p in prompts[:32]]
    assert generate(model, tok, longer, max_new_tokens=24, batch_size=32, engine="compiled") == generate(
        model, tok, longer, max_new_tokens=24, batch_size=32, engine="eager"
    )
    grown = CompiledEngine._state[model].shape
    assert grown[0] == 32 and grown[1] > shape[1]
    assert generate(model, tok, prompts, max_new_tokens=24, batch_size=32, engine="compiled") == eager_second
    assert CompiledEngine._state[model].shape == grown


def test_settled_tests_are_off_where_decoding_rewrites_earlier_text(members):
    """``clean_up_tokenization_spaces`` turns ``a '`` into ``a's`` when ``s`` comes: a
    partial text is then no guide to the final one, so no row is settled early."""
    _, tok = members["base"]
    always = [lambda text: True]
    assert StopCheck(tok, ("\n",), always).ended([[5]]) == [True]
    rewriting = copy.copy(tok)
    rewriting.clean_up_tokenization_spaces = True
    assert StopCheck(rewriting, ("\n",), always).ended([[5]]) == [False]


def test_prompt_buckets_bound_the_compiled_shapes():
    assert [prompt_bucket(n) for n in (1, 32, 33, 200, 900, 2048, 2049, 5000)] == [
        32, 32, 64, 256, 1024, 2048, 4096, 6144,
    ]  # fmt: skip


def test_auto_is_eager_on_a_cpu_and_the_choice_is_logged(caplog):
    import evomerge.evaluate.generation as generation

    generation._logged.clear()
    with caplog.at_level(logging.INFO, logger="evomerge.evaluate.generation"):
        engine = resolve_engine("auto", torch.nn.Linear(2, 2))
    assert type(engine) is GENERATION_ENGINES["eager"]
    assert "generation engine: eager (cpu: a decoding step is compute-bound" in caplog.text


def test_auto_on_cuda_falls_back_to_eager_when_compiling_fails(members, mix_prompts, monkeypatch, caplog):
    """No GPU here: ``auto`` is resolved as for a CUDA model, and the compiled engine made
    to fail as a broken compiler would; ``auto`` must then decode eagerly, with a warning."""
    model, tok = members["greek"]
    prompts = [tok(p)["input_ids"] for p in mix_prompts[:20]]
    stop = StopCheck(tok, ("\n",))
    engine = resolve_engine("auto", model, device="cuda")
    assert type(engine) is not GENERATION_ENGINES["eager"]

    def broken(self, *args, **kwargs):
        raise RuntimeError("inductor: C compiler not found (simulated)")

    monkeypatch.setattr(CompiledEngine, "decode", broken)
    with caplog.at_level(logging.WARNING, logger="evomerge.evaluate.generation"), generation_ready(tok):
        got = engine.decode(model, prompts, 8, stop)
        assert got == GENERATION_ENGINES["eager"]().decode(model, prompts, 8, stop)
    assert "compiled generation failed" in caplog.text and "C compiler not found" in caplog.text


def test_auto_batch_size_found_once_is_kept_for_the_model(demo_family, mix_prompts, monkeypatch):
    """A GPU's out-of-memory error cannot happen here, so it is simulated: forward passes
    over more than 16 rows raise torch.OutOfMemoryError, as CUDA would."""
    model, tok = load_member(demo_family, "add")
    expected = generate(model, tok, mix_prompts[:50], max_new_tokens=6, batch_size=16, engine="eager")
    real = model.forward
    sizes: list[int] = []

    @functools.wraps(real)  # the same signature: the engine passes the cache by its current name
    def small_gpu(*args, **kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        if kwargs["input_ids"].shape[0] > 16:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "forward", small_gpu)
    assert generate(model, tok, mix_prompts[:50], max_new_tokens=6, batch_size="auto", engine="eager") == expected
    assert sizes[:3] == [50, 32, 16]  # 64 takes all 50 prompts, then 32, then 16 fits
    sizes.clear()
    assert generate(model, tok, mix_prompts[:50], max_new_tokens=6, batch_size="auto", engine="eager") == expected
    assert sizes[0] == 16  # the next call starts at the size found


def test_the_engine_is_chosen_per_run_and_checked(members, tmp_path, mix_prompts):
    model, tok = members["base"]
    use_engine(model, "hf")
    calls: list[int] = []
    real = model.generate
    model.generate = lambda **kw: (calls.append(1), real(**kw))[1]  # type: ignore[method-assign]
    try:
        generate(model, tok, mix_prompts[:4], max_new_tokens=4)
    finally:
        del model.generate
        use_engine(model, "auto")
    assert calls  # the run's engine was used without naming it
    with pytest.raises(Exception, match="unknown generation engine 'fast'"):
        use_engine(model, "fast")
    config = tmp_path / "c.yaml"
    config.write_text("models: {base: a, endpoints: [b]}\noutput: {generation: compile}\n")
    with pytest.raises(ConfigError, match=r"unknown generation engine 'compile'\. Did you mean 'compiled'"):
        load_config(config)


def test_prompts_of_mixed_lengths_are_prefilled_in_groups_with_the_same_answers(members, mix_prompts):
    """Short and long prompts in one batch: each length group is prefilled at its own
    width and placed in the shared cache where a single padded prefill would put it."""
    from evomerge.evaluate.decoding import length_groups

    model, tok = members["add"]
    prompts = [p if i % 3 else p * 4 for i, p in enumerate(mix_prompts[:90])]  # 5 to 100 tokens
    lengths = [len(tok(p)["input_ids"]) for p in prompts]
    groups = length_groups(lengths)
    assert len(groups) >= 2 and sorted(i for g in groups for i in g) == list(range(90))
    padded, grouped = 90 * max(lengths), sum(len(g) * max(lengths[i] for i in g) for g in groups)
    assert grouped < 0.75 * padded  # the grouped path is taken
    reference = generate(model, tok, prompts, max_new_tokens=16, batch_size=90, engine="hf", stop=())
    assert generate(model, tok, prompts, max_new_tokens=16, batch_size=90, engine="eager", stop=()) == reference


def test_length_groups():
    from evomerge.evaluate.decoding import length_groups

    assert length_groups([10] * 20) == [list(range(20))]
    lengths = [5] * 10 + [40] * 10 + [6] * 3
    groups = length_groups(lengths)
    assert groups == [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 20, 21, 22], list(range(10, 20))]
    assert length_groups([5, 40, 6]) == [[0, 2, 1]]  # too few prompts to split
