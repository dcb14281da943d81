"""Generation engines against each other, same prompts, same run (issue: fast evaluation).

Demo family (default; CPU): the demo's target task ("mix", 900 search prompts) on the
``add`` specialist, greedy, 24 new tokens at most, stop at a newline, through each
engine (``hf`` = transformers' ``generate``, the reference; ``eager``; ``compiled``) at
batch 1, 16, 64 and 128. Tokens/s counts useful tokens (each answer up to its stop or
EOS), not padded slots. Every engine's texts must equal ``hf``'s. Then the demo search
(``examples/mix.yaml``, 2 generations) per engine: search seconds per candidate.

``--synthetic 1.1b --device cuda``: a random-weight Llama of TinyLlama-1.1B's shape in
bf16, batch 32, 64 prompt tokens, 128 new tokens (no EOS), the issue's GPU check (``hf``
first: the others are compared with it); ``--synthetic tiny`` runs the same path on a
CPU in seconds. Peak memory: the process's peak RSS, and ``torch.cuda.max_memory_allocated``
per engine on CUDA. Ends with one JSON line.

    .venv/bin/python bench/gen_speed.py [--synthetic tiny|1.1b] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from evomerge.evaluate.generation import generate

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("hf", "eager", "compiled")
SHAPES = {  # TinyLlama-1.1B's shape, and a tiny one to try the path on a CPU
    "1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, vocab_size=32000),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512),
}  # fmt: skip


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def useful_tokens(tok, texts: list[str]) -> int:
    """Each answer's tokens plus the one that ended it (stop or EOS)."""
    return sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)


def timed(fn, device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def demo(args) -> dict:
    from evomerge.demo import build_demo_family, load_member
    from evomerge.demo.family import as_task_items, load_jsonl
    from evomerge.evaluate import PromptTemplate

    family = build_demo_family()
    model, tok = load_member(family, "add")
    items = as_task_items(load_jsonl(family / "data" / "mix" / "search.jsonl"))
    prompts = [PromptTemplate().render(it) for it in items]
    device = torch.device("cpu")
    print(f"threads {torch.get_num_threads()}; {len(prompts)} prompts (mix, search split); model: demo add")
    figures: dict = {}
    for batch in args.batches:
        subset = prompts[:200] if batch == 1 else prompts
        row = {}
        reference = None
        for engine in ENGINES:
            run = partial(generate, model, tok, subset, max_new_tokens=24, batch_size=batch, engine=engine)
            first, _ = timed(run, device)  # compiles for ``compiled``; warms caches for the others
            seconds, texts = min((timed(run, device) for _ in range(args.repeats)), key=lambda r: r[0])
            reference = texts if reference is None else reference
            assert texts == reference, f"{engine} at batch {batch} differs from hf"
            tps = useful_tokens(tok, texts) / seconds
            row[engine] = {"tokens_per_s": round(tps, 1), "seconds": round(seconds, 3), "first_call_s": round(first, 2)}
            print(f"batch {batch:3d} {engine:9s} {tps:9.1f} tokens/s ({seconds:.2f}s for {len(subset)} prompts; "
                  f"first call {first:.1f}s)  peak RSS {peak_rss_gib():.2f} GiB")  # fmt: skip
        figures[str(batch)] = row
    b64, b128 = figures.get("64", {}).get("eager"), figures.get("128", {}).get("eager")
    if b64 and b128:
        print(f"eager: batch 128 vs 64: {b128['tokens_per_s'] / b64['tokens_per_s']:.2f}x the tokens/s")
    result: dict = {"bench": "gen_speed", "model": "demo add (cpu)", "threads": torch.get_num_threads(),
                    "tokens_per_s": figures, "identical_outputs": True}  # fmt: skip
    if not args.skip_search:
        result["search_s_per_candidate"] = search_per_candidate()
    result["peak_rss_gib"] = round(peak_rss_gib(), 2)
    return result


def search_per_candidate() -> dict:
    """``examples/demo.yaml`` for 2 generations per engine: search seconds per candidate
    (the respondents, scored before, are left out) and the best's test score."""
    from evomerge.loader import load_config
    from evomerge.search.experiment import run_experiment
    from evomerge.search.store import RunStore

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in ENGINES:
            config = load_config(ROOT / "examples" / "mix.yaml")
            config = config.model_copy(
                update={
                    "search": config.search.model_copy(update={"generations": 2}),
                    "output": config.output.model_copy(update={"generation": engine}),
                }
            )
            run_dir = Path(tmp) / engine
            result = run_experiment(config, run_dir)
            store = RunStore.in_dir(run_dir)
            wall = sum(g.seconds["wall"] for g in store.generations())
            store.close()
            per = wall / result.evaluations
            best = next(t.scores["mix"] for t in result.tests if t.name == "best")
            out[engine] = {"seconds": round(per, 3), "best_test": round(best, 4)}
            print(f"demo search, {engine:9s}: {per:.3f} s per candidate ({result.evaluations} candidates), "
                  f"best test {best:.4f}")  # fmt: skip
            shutil.rmtree(run_dir)
    return out


def synthetic(args) -> dict:
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    device = torch.device(args.device)
    shape = SHAPES[args.synthetic]
    torch.manual_seed(0)
    config = LlamaConfig(**shape, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    dtype = torch.bfloat16 if device.type == "cuda" or args.synthetic == "1.1b" else torch.float32
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
    vocab = {f"t{i}": i for i in range(shape["vocab_size"])}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t3")), pad_token="t0", eos_token="t2"
    )
    tok.eos_token = None  # no EOS: every row decodes all its new tokens, as the check does
    batch, prompt_len, new = args.batch, 64, args.new_tokens
    g = torch.Generator().manual_seed(1)
    prompts = [" ".join(f"t{int(t)}" for t in torch.randint(3, shape["vocab_size"], (prompt_len,), generator=g))
               for _ in range(batch)]  # fmt: skip
    print(f"synthetic {args.synthetic} Llama ({sum(p.numel() for p in model.parameters()) / 1e9:.2f}B, {dtype}) "
          f"on {device}; batch {batch}, {prompt_len} prompt tokens, {new} new tokens")  # fmt: skip
    rows, reference = {}, None
    for engine in args.engines:
        run = partial(generate, model, tok, prompts, max_new_tokens=new, batch_size=batch, engine=engine, stop=())
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        first, _ = timed(run, device)
        seconds, texts = min((timed(run, device) for _ in range(args.repeats)), key=lambda r: r[0])
        tokens = sum(len(t.split()) for t in texts)
        agree = None if reference is None else sum(a == b for a, b in zip(texts, reference, strict=True)) / batch
        reference = texts if reference is None else reference
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else peak_rss_gib()
        rows[engine] = {"tokens_per_s": round(tokens / seconds, 1), "seconds": round(seconds, 3),
                        "first_call_s": round(first, 1), "peak_gib": round(peak, 2),
                        "same_text_as_hf": agree}  # fmt: skip
        print(
            f"{engine:9s} {tokens / seconds:9.1f} tokens/s ({seconds:.2f}s; first call {first:.1f}s) "
            f"{'GPU peak' if device.type == 'cuda' else 'peak RSS'} {peak:.2f} GiB; rows equal to hf: {agree}"
        )
    speed = {e: r["tokens_per_s"] for e, r in rows.items()}
    ratios = {f"{a}_over_{b}": round(speed[a] / speed[b], 2) for a, b in (("compiled", "eager"), ("compiled", "hf"),
              ("eager", "hf")) if a in speed and b in speed}  # fmt: skip
    print("  ".join(f"{k.replace('_', ' ')}: {v}x" for k, v in ratios.items()))
    return {"bench": "gen_speed", "model": f"synthetic {args.synthetic} ({device}, {dtype})", "batch": batch,
            "new_tokens": new, "engines": rows, **ratios}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--synthetic", choices=sorted(SHAPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 128])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES, help="--synthetic only")
    parser.add_argument("--skip-search", action="store_true")
    args = parser.parse_args()
    print(json.dumps(synthetic(args) if args.synthetic else demo(args)))


if __name__ == "__main__":
    main()
