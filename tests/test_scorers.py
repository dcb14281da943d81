"""Scorers on the demo family: real generation and real log-likelihoods."""

from __future__ import annotations

import copy

import pytest
import torch

from evomerge.demo import load_member
from evomerge.demo.family import as_task_items, load_jsonl
from evomerge.evaluate import (
    AnswerLossScorer,
    Evaluator,
    GenerationScorer,
    HeldOutError,
    Item,
    LoglikelihoodChoiceScorer,
    PerplexityScorer,
    PromptTemplate,
    TaskDataError,
    generate,
    load_hf_dataset,
    split_items,
)
from evomerge.evaluate.forced import forced_completions
from evomerge.evaluate.generation import use_engine
from evomerge.evaluate.scorers import continuation_logprobs


@pytest.fixture(scope="module")
def members(demo_family):
    return {name: load_member(demo_family, name) for name in ("base", "add", "greek", "cyrillic")}


@pytest.fixture(scope="module")
def test_items(demo_family, demo_manifest):
    return {
        s: as_task_items(load_jsonl(demo_family / demo_manifest["tasks"][s]["test"])) for s in demo_manifest["skills"]
    }


def test_generation_scorer_reproduces_the_foundation_measurements(members, test_items, demo_manifest):
    scorer = GenerationScorer("exact", strict=True, max_new_tokens=demo_manifest["spec"]["max_new_tokens"])
    for name, (model, tok) in members.items():
        for skill, items in test_items.items():
            accuracy = 100 * sum(scorer.score(model, tok, items)) / len(items)
            recorded = demo_manifest["models"][name]["scores"]["test"][skill]
            assert accuracy == pytest.approx(recorded, abs=1.0), (name, skill)
            if name == skill:  # each specialist is high on its own skill ...
                assert accuracy >= 85, (name, skill)
            elif name != "base":  # ... and low on the others' (the base's level, the easy items)
                assert accuracy <= 45, (name, skill)


def test_number_extraction_agrees_with_exact_match_on_sums(members, test_items):
    model, tok = members["add"]
    items = test_items["add"][:60]
    exact = GenerationScorer("exact", strict=True).score(model, tok, items)
    number = GenerationScorer("number").score(model, tok, items)
    assert number == exact and 0 < sum(exact) < len(exact)


def _forward_rows(model):
    """A list that gets the batch rows of each forward of ``model``, and the hook's handle."""
    rows: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda m, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    return rows, hook


def test_answers_that_can_no_longer_be_right_stop_early_and_no_score_changes(members, test_items):
    """Strict exact match: a decoded row stops once its text is no longer a prefix of its
    answer. Every judgement stays what the whole answer gives, and the decoding does fewer
    row-steps (counted at the model's forward)."""
    model, tok = members["base"]
    items = [it for skill in test_items.values() for it in skill[:40]]
    scorer = GenerationScorer("exact", strict=True, max_new_tokens=24)
    rows, hook = _forward_rows(model)
    try:
        whole = scorer.completions(model, tok, items)
        whole_rows, rows[:] = sum(rows), []
        cut = scorer.completions(model, tok, items, cut=True)
        cut_rows = sum(rows)
    finally:
        hook.remove()
    judged = [scorer.judge(c, it) for c, it in zip(whole, items, strict=True)]
    assert [scorer.judge(c, it) for c, it in zip(cut, items, strict=True)] == judged
    assert 0 < sum(judged) < len(items)
    assert all(w.startswith(c) for w, c in zip(whole, cut, strict=True))
    assert sum(w != c for w, c in zip(whole, cut, strict=True)) > len(items) // 4  # real answers cut short
    assert all(c == w for c, w, s in zip(cut, whole, judged, strict=True) if s)  # a right answer never is
    assert cut_rows < 0.8 * whole_rows, (cut_rows, whole_rows)


@pytest.mark.parametrize("name", ["base", "add", "greek", "cyrillic"])
def test_strict_exact_match_is_scored_in_one_forward_with_decoding_s_scores(members, test_items, name):
    """``score`` checks each answer in one forward over prompt + answer (``forced``): the
    same scores as judging the whole decoded answers, each item in one forward (prompts
    of similar length together) instead of a decoding step per token."""
    model, tok = members[name]
    items = [it for skill in test_items.values() for it in skill[:60]]
    scorer = GenerationScorer("exact", strict=True, max_new_tokens=24, batch_size=64)
    rows, hook = _forward_rows(model)
    try:
        whole = scorer.completions(model, tok, items)
        decoding_forwards, rows[:] = len(rows), []
        scores = scorer.score(model, tok, items)
        forwards, checked = len(rows), sum(rows)
    finally:
        hook.remove()
    assert scores == [scorer.judge(c, it) for c, it in zip(whole, items, strict=True)]
    assert 0 < sum(scores) < len(items)
    assert checked == len(items), (checked, len(items))  # each item in one forward, none left to decode
    assert decoding_forwards >= 4 * forwards, (forwards, decoding_forwards)  # a step per token


def test_what_one_forward_cannot_settle_is_decoded(members, test_items):
    """An answer with leading spaces: the model writes the digits at once, which leaves the
    answer's tokens but may still be right (strip() drops the spaces). Those items are
    decoded, and judged as decoding's whole answers are."""
    model, tok = members["add"]
    plain = test_items["add"][:30]
    spaced = [Item(it.id, it.question, answer="  " + str(it.answer)) for it in plain]
    scorer = GenerationScorer("exact", strict=True, max_new_tokens=24)
    prompts = [scorer.prompt.render(it) for it in spaced]
    forced = forced_completions(
        model, tok, prompts, [str(it.answer) for it in spaced], max_new_tokens=24, stop=("\n",), batch_size=32
    )
    right = scorer.score(model, tok, plain)
    assert sum(right) > 20
    assert all(f is None for f, r in zip(forced, right, strict=True) if r)  # left to decoding
    whole = scorer.completions(model, tok, spaced)
    assert scorer.score(model, tok, spaced) == [scorer.judge(c, it) for c, it in zip(whole, spaced, strict=True)]
    assert scorer.score(model, tok, spaced) == right


def test_a_bpe_tokenizer_gets_decoding_s_scores(gpt2_family):
    """GPT-2's byte-level BPE (a random model): the forced check and decoding agree."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gpt2_family / "models" / "a"
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    items = [Item(f"i{a}-{b}", f"{a}+{b}=", answer=str(a + b)) for a in range(3, 40, 3) for b in range(5, 30, 7)]
    scorer = GenerationScorer("exact", strict=True, max_new_tokens=12, batch_size=16)
    whole = scorer.completions(model, tok, items)
    assert scorer.score(model, tok, items) == [scorer.judge(c, it) for c, it in zip(whole, items, strict=True)]


def _word_level_llama(vocab_size: int = 300):
    """A random tiny Llama whose tokenizer reads words ``t<id>`` and writes them back
    joined by spaces: an answer is `` t9 t7`` after its prompt, as after ``Answer:``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=vocab_size, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    special = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}  # not prefixes of words: matched anywhere in a text
    words = Tokenizer(models.WordLevel({**special, **{f"t{i}": i for i in range(4, vocab_size)}}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", eos_token="</s>")
    return LlamaForCausalLM(config).eval(), tok


def test_a_reference_written_after_a_space_is_settled_in_one_forward():
    """References that are the model's own greedy answers, which follow the prompt after
    a space: tried as written they do not tokenise as the model writes them, after a space
    they do, so the items are settled without decoding, right where decoding is right."""
    model, tok = _word_level_llama()
    g = torch.Generator().manual_seed(1)
    questions = [" ".join(f"t{int(t)}" for t in torch.randint(4, 300, (12,), generator=g)) for _ in range(40)]
    scorer = GenerationScorer("exact", strict=True, max_new_tokens=6, batch_size=16, stop=())
    items = [Item(str(i), q, answer="t5") for i, q in enumerate(questions)]
    own = scorer.completions(model, tok, items[:20])
    items = [Item(it.id, it.question, answer=own[i] if i < 20 else "t5") for i, it in enumerate(items)]
    prompts = [scorer.prompt.render(it) for it in items]
    forced = forced_completions(
        model, tok, prompts, [str(it.answer) for it in items], max_new_tokens=6, stop=(), batch_size=16
    )
    # left to decode: only a right answer holding a token decoding skips (<pad>, from a random model)
    assert sum(f is None for f in forced[:20]) <= 2 and None not in forced[20:]
    whole = scorer.completions(model, tok, items)
    scores = scorer.score(model, tok, items)
    assert scores == [scorer.judge(c, it) for c, it in zip(whole, items, strict=True)]
    assert scores[:20] == [1.0] * 20 and sum(scores[20:]) < 20


def test_a_16_bit_model_decodes_every_answer(members, test_items, monkeypatch):
    """In bf16 one forward's argmax and decoding's part on near ties (bench/forced_check.py),
    so a 16-bit model's answers are decoded; an fp32 model's are checked in one forward."""
    import evomerge.evaluate.scorers as scorers

    calls: list[int] = []
    real = scorers.forced_completions
    monkeypatch.setattr(scorers, "forced_completions", lambda *a, **k: calls.append(1) or real(*a, **k))
    model, tok = members["add"]
    items = test_items["add"][:20]
    scorer = GenerationScorer("exact", strict=True, max_new_tokens=24)
    wide = scorer.score(model, tok, items)
    assert calls == [1]
    half = copy.deepcopy(model).to(torch.bfloat16)
    whole = scorer.completions(half, tok, items)
    assert scorer.score(half, tok, items) == [scorer.judge(c, it) for c, it in zip(whole, items, strict=True)]
    assert calls == [1] and sum(wide) > 10


def test_the_hf_engine_decodes_every_answer(members, test_items):
    """``output.generation: hf`` is the reference: no forced check, transformers' generate."""
    model, tok = members["add"]
    items = test_items["add"][:20]
    scorer = GenerationScorer("exact", strict=True, max_new_tokens=24)
    use_engine(model, "hf")
    rows, hook = _forward_rows(model)
    try:
        scores = scorer.score(model, tok, items)
    finally:
        hook.remove()
        use_engine(model, "auto")
    assert len(rows) > 3 and set(rows) == {len(items)}  # generate's steps, every row to the end
    assert scores == scorer.score(model, tok, items)


def test_only_strict_exact_match_settles_early(test_items):
    item = test_items["add"][0]
    assert GenerationScorer("exact", strict=True).settled(item) is not None
    for scorer in (GenerationScorer("exact"), GenerationScorer("number"), GenerationScorer("choice")):
        assert scorer.settled(item) is None  # they read the whole answer


def test_batching_does_not_change_scores(members, test_items):
    model, tok = members["greek"]
    items = test_items["greek"][:40]
    assert GenerationScorer(batch_size=1).score(model, tok, items) == GenerationScorer(batch_size=16).score(
        model, tok, items
    )


def _choice_items(items: list[Item]) -> list[Item]:
    """Sums as 3-way multiple choice: the right answer and two near misses of the same
    length (the last digit changed), so no choice wins by being short."""
    out = []
    for it in items:
        right = it.answer
        choices = [right, *(right[:-1] + str((int(right[-1]) + k) % 10) for k in (1, 5))]
        out.append(Item(it.id, it.question, choices=tuple(choices), label=0))
    return out


def test_loglikelihood_choice_prefers_the_specialist(members, test_items):
    items = _choice_items(test_items["add"][:60])
    scorer = LoglikelihoodChoiceScorer(continuation="{choice}")
    specialist = sum(scorer.score(*members["add"], items)) / len(items)
    other = sum(scorer.score(*members["greek"], items)) / len(items)
    assert specialist >= 0.8 and specialist > other
    normed = LoglikelihoodChoiceScorer(continuation="{choice}", length_normalized=True).score(*members["add"], items)
    assert len(normed) == len(items) and set(normed) <= {0.0, 1.0}


def test_continuation_logprobs_match_one_sequence_at_a_time(members):
    model, tok = members["base"]
    pairs = [("47+38=", "85"), ("gr bado=", "βαδο"), ("1+1=", "2")]
    batched = continuation_logprobs(model, tok, pairs, batch_size=8)
    for (context, continuation), got in zip(pairs, batched, strict=True):
        ctx = tok(context)["input_ids"]  # the prompt as the tokenizer encodes it: with BOS, as for generation
        assert ctx[0] == tok.bos_token_id
        cont = tok(continuation, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ctx + cont])).logits.log_softmax(-1)[0]
        expected = sum(float(logits[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))
        assert got == pytest.approx(expected, abs=1e-4)


def test_perplexity_is_lower_for_the_model_trained_on_the_text(members, test_items):
    items = [i for i in test_items["cyrillic"] if i.meta["level"] == "hard"][:50]  # what only it was taught
    scorer = PerplexityScorer()
    assert scorer.higher_is_better is False
    own = sum(scorer.score(*members["cyrillic"], items)) / len(items)
    other = sum(scorer.score(*members["greek"], items)) / len(items)
    assert 0 < own < other


def test_answer_loss_scores_only_the_answer_and_favours_the_specialist(members, test_items):
    items = test_items["greek"][:40]
    scorer = AnswerLossScorer()
    assert scorer.higher_is_better is False
    own = scorer.score(*members["greek"], items)
    other = scorer.score(*members["cyrillic"], items)
    assert 0 < sum(own) < sum(other)
    model, tok = members["greek"]
    item = items[0]
    n = len(tok(item.answer, add_special_tokens=False)["input_ids"])
    expected = -continuation_logprobs(model, tok, [(scorer.prompt.render(item, (), tok), item.answer)])[0] / n
    assert own[0] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(TaskDataError, match="no answer"):
        scorer.score(model, tok, [Item("q", "1+1=", None)])


def test_generation_pads_with_eos_when_the_tokenizer_has_no_pad_token(members, test_items):
    model, tok = members["greek"]
    prompts = [it.question for it in test_items["greek"][:12]]
    expected = generate(model, tok, prompts, max_new_tokens=8)
    bare = copy.deepcopy(tok)
    bare.pad_token = None
    bare.padding_side = "right"
    assert generate(model, bare, prompts, max_new_tokens=8) == expected
    assert bare.pad_token is None and bare.padding_side == "right"  # the caller's tokenizer is restored


def test_auto_batch_size_backs_off_on_out_of_memory(members, test_items, monkeypatch):
    """A GPU's out-of-memory error cannot happen here, so it is simulated: batches larger
    than 8 raise torch.OutOfMemoryError, as CUDA would (through transformers' generate; the
    eager engine's back-off is in test_generation.py)."""
    model, tok = members["add"]
    prompts = [it.question for it in test_items["add"][:40]]
    expected = generate(model, tok, prompts, max_new_tokens=4, batch_size=8)
    real = model.generate
    sizes = []

    def small_gpu(**kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        if kwargs["input_ids"].shape[0] > 8:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(**kwargs)

    monkeypatch.setattr(model, "generate", small_gpu)
    assert generate(model, tok, prompts, max_new_tokens=4, batch_size="auto", engine="hf") == expected
    assert sizes[:4] == [40, 32, 16, 8]  # 64 takes all 40 prompts, then 32, 16 and 8 fits
    with pytest.raises(torch.OutOfMemoryError):
        generate(model, tok, prompts, max_new_tokens=4, batch_size=16, engine="hf")  # a fixed size is kept


class Spy:
    """Wraps a real scorer and records which items it was asked to score."""

    def __init__(self, scorer):
        self.scorer, self.seen = scorer, []
        self.higher_is_better = scorer.higher_is_better

    def score(self, model, tokenizer, items):
        self.seen.extend(it.id for it in items)
        return self.scorer.score(model, tokenizer, items)


def test_the_test_split_is_never_scored_during_search(members, test_items):
    splits = split_items(test_items["add"], seed=1, test_fraction=0.3, fewshot=5)
    spy = Spy(GenerationScorer("number"))
    evaluator = Evaluator("add", splits, spy)
    model, tok = members["add"]
    anchors = evaluator.anchors(20, seed=7)
    assert anchors == evaluator.anchors(20, seed=7) and set(anchors) <= {it.id for it in splits.search}
    for seed in range(3):  # a few "generations", each on its own anchors
        evaluator.score(model, tok, evaluator.anchors(15, seed=seed))
    evaluator.score(model, tok)  # all of search
    held_out = {it.id for it in splits.test} | {it.id for it in splits.fewshot}
    assert spy.seen and not set(spy.seen) & held_out
    with pytest.raises(HeldOutError, match="never scored during a search"):
        evaluator.score(model, tok, [splits.test[0].id])
    test_scores = evaluator.score_test(model, tok)
    assert set(test_scores) == {it.id for it in splits.test}
    assert sum(test_scores.values()) / len(test_scores) >= 0.8  # the add specialist, held out


def test_evaluator_gives_the_fewshot_split_to_the_scorer(test_items):
    splits = split_items(test_items["add"], seed=1, fewshot=3)
    evaluator = Evaluator("add", splits, GenerationScorer("number"))
    assert evaluator.scorer.fewshot == splits.fewshot
    prompt = evaluator.scorer.prompt.render(splits.search[0], evaluator.scorer.fewshot)
    assert prompt.count("\n") == 3 and prompt.endswith(splits.search[0].question)


def test_chat_template_prompts(members):
    _, tok = members["base"]
    chat = copy.deepcopy(tok)
    chat.chat_template = (
        "{% for m in messages %}[{{ m['content'] }}]{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    )
    text = PromptTemplate(chat=True).render(Item("1", "47+38="), tokenizer=chat)
    assert text == "[47+38=]>"


def test_hf_dataset_from_a_local_directory(tmp_path):
    """The hub path needs the network; a local dataset directory takes the same code path."""
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "test.jsonl").write_text('{"question": "1+1=", "answer": "2"}\n{"question": "2+2="}\n')
    with pytest.raises(TaskDataError, match=r"ds\[test\], row 2: needs 'answer'"):
        load_hf_dataset(str(tmp_path / "ds"), split="test")
    (tmp_path / "ds" / "test.jsonl").write_text('{"question": "1+1=", "answer": "2"}\n')
    assert load_hf_dataset(str(tmp_path / "ds"), split="test") == [Item("1", "1+1=", answer="2")]
    with pytest.raises(TaskDataError, match="could not be loaded"):
        load_hf_dataset(str(tmp_path / "nowhere"), split="test")
