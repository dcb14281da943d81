"""Strict exact match checked in one forward against decoding, on a model with a real
vocabulary's size, in bf16 and in fp32 (the forced check: ``evomerge.evaluate.forced``).

A random-weight Llama (hidden 768, 6 layers, a vocabulary of 32,000 on the CPU;
``--shape``), 64 items of 192 prompt tokens, 16 new tokens at most. Half the items'
reference is the model's own greedy answer (right: the check must follow it to the end),
half a random one (wrong from its first token). Per dtype, three ways, each in a process
of its own so that its peak RSS is its own, at batch 32:

- ``decoded``: the whole answers decoded (``completions``), then judged;
- ``forced``: ``forced_completions`` on every item, what it cannot settle decoded: the
  check itself, in any dtype;
- ``score``: ``GenerationScorer.score``, which uses the check in fp32 only.

Prints how many items each way gets right and where ``forced`` and ``decoded`` disagree
(one forward's argmax against step-by-step decoding's, on near ties); ``score`` must
equal ``decoded``. Ends with one JSON line.

    .venv/bin/python bench/forced_check.py [--shape small|tiny]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import time

SHAPES = {
    "small": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=12,
                  num_key_value_heads=4, vocab_size=32000),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1000),
}  # fmt: skip
ITEMS, PROMPT, NEW, BATCH = 64, 192, 16, 32


def setup(shape: str, dtype_name: str):
    """The model, its word-level tokenizer (``t<id>``), the scorer and the items."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from evomerge.evaluate import GenerationScorer, Item

    dims = SHAPES[shape]
    torch.manual_seed(0)
    config = LlamaConfig(**dims, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype_name)).eval()
    special = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}  # not prefixes of words: matched anywhere in a text
    words = Tokenizer(
        models.WordLevel({**special, **{f"t{i}": i for i in range(4, dims["vocab_size"])}}, unk_token="<unk>")
    )
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # an answer follows its prompt after a space
    tok = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", eos_token="</s>")
    g = torch.Generator().manual_seed(1)
    questions = [" ".join(f"t{int(t)}" for t in torch.randint(4, dims["vocab_size"], (PROMPT,), generator=g))
                 for _ in range(ITEMS)]  # fmt: skip
    scorer = GenerationScorer("exact", strict=True, max_new_tokens=NEW, batch_size=BATCH, stop=())
    items = [Item(str(i), q, answer="t5") for i, q in enumerate(questions)]
    own = scorer.completions(model, tok, items[: ITEMS // 2])  # the model's own greedy answers: right
    items = [Item(it.id, it.question, answer=a if i < ITEMS // 2 else it.answer) for i, (it, a) in
             enumerate(zip(items, [*own, *["t5"] * (ITEMS - ITEMS // 2)], strict=True))]  # fmt: skip
    return model, tok, scorer, items


def run(way: str, shape: str, dtype_name: str, out) -> None:
    """One way in this process: its seconds (best of 2), scores and peak RSS (after setup, and at the end)."""
    from evomerge.evaluate.forced import forced_completions

    model, tok, scorer, items = setup(shape, dtype_name)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    def once():
        if way == "score":
            return scorer.score(model, tok, items)
        texts = scorer.completions(model, tok, items) if way == "decoded" else [None] * len(items)
        if way == "forced":
            prompts = [scorer.prompt.render(it) for it in items]
            references = [str(it.answer) for it in items]
            texts = forced_completions(model, tok, prompts, references, max_new_tokens=NEW, stop=(), batch_size=BATCH)
            rest = [k for k, t in enumerate(texts) if t is None]
            decoded = scorer.completions(model, tok, [items[k] for k in rest]) if rest else []
            for k, text in zip(rest, decoded, strict=True):
                texts[k] = text
        return [scorer.judge(c, it) for c, it in zip(texts, items, strict=True)]

    best, scores = float("inf"), None
    for _ in range(2):
        started = time.perf_counter()
        scores = once()
        best = min(best, time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out.put({"seconds": best, "scores": scores, "peak_rss_gib": peak, "rss_after_setup_gib": before})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    figures: dict = {"bench": "forced_check", "shape": args.shape, "items": ITEMS, "prompt_tokens": PROMPT,
                     "max_new_tokens": NEW, "batch": BATCH}  # fmt: skip
    for dtype_name in ("bfloat16", "float32"):
        rows = {}
        for way in ("decoded", "forced", "score"):
            queue = ctx.Queue()
            process = ctx.Process(target=run, args=(way, args.shape, dtype_name, queue))
            process.start()
            rows[way] = queue.get()
            process.join()
            r = rows[way]
            print(f"{dtype_name:8s} {way:8s} {r['seconds']:.2f} s, peak RSS {r['peak_rss_gib']:.2f} GiB "
                  f"({r['rss_after_setup_gib']:.2f} loaded), {sum(r['scores']):.0f} of {ITEMS} right")  # fmt: skip
        assert rows["score"]["scores"] == rows["decoded"]["scores"], f"{dtype_name}: score() changed a score"
        apart = sum(a != b for a, b in zip(rows["forced"]["scores"], rows["decoded"]["scores"], strict=True))
        ratio = rows["decoded"]["seconds"] / rows["score"]["seconds"]
        print(f"{dtype_name}: one forward and decoding disagree on {apart} of {ITEMS} items; "
              f"decoding takes {ratio:.2f}x score()'s time")  # fmt: skip
        figures[dtype_name] = {
            "forced_disagrees_with_decoding": apart,
            "decoded_over_score_seconds": round(ratio, 2),
            **{f"{w}_seconds": round(r["seconds"], 2) for w, r in rows.items()},
            **{f"{w}_peak_rss_gib": round(r["peak_rss_gib"], 2) for w, r in rows.items()},
        }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
