"""lm-eval-harness tasks, scored per item on the live, in-memory model.

The task (and its dataset) is built once; each candidate is scored by wrapping the same
model object in lm-eval's ``HFLM`` (which accepts an instantiated model, so nothing is
saved or reloaded) and asking ``lm_eval.evaluator.evaluate`` for the chosen documents
only, with ``log_samples`` on. Per-item scores are the task's metric for each logged
sample. Mergenetic, by contrast, rebuilds lm-eval's TaskManager and reloads a vLLM
engine for every candidate.

A task is a registered name (``gsm8k``; needs its dataset, so usually the network) or a
task YAML on disk; a YAML with ``dataset_path: json`` and local ``data_files`` works
offline.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..errors import EvomergeError
from ..yamltext import load_yaml
from .tasks import Item

log = logging.getLogger(__name__)


class LMEvalError(EvomergeError):
    """An lm-eval task cannot be found, built or scored."""


class LMEvalScorer:
    """One lm-eval task; ``items()`` lists its documents, ``score`` gives one value each."""

    def __init__(
        self,
        task: str | Path,
        *,
        metric: str | None = None,
        batch_size: int = 16,
        add_bos_token: bool = True,
        higher_is_better: bool = True,
    ) -> None:
        self.task = task
        self.metric = metric
        self.batch_size = batch_size
        # HF tokenizers that add BOS do so for every model input; lm-eval's HFLM does not by default.
        self.add_bos_token = add_bos_token
        self.higher_is_better = higher_is_better
        self._task_dict: dict[str, Any] | None = None
        self._lm: tuple[int, Any] | None = None

    def __repr__(self) -> str:  # stable across processes: caches of scores are keyed by it
        return f"LMEvalScorer({str(self.task)!r}, metric={self.metric!r}, add_bos_token={self.add_bos_token})"

    @property
    def name(self) -> str:
        return next(iter(self.task_dict()))

    def task_dict(self) -> dict[str, Any]:
        """Built once: the TaskManager, the task and its dataset."""
        if self._task_dict is None:
            try:
                from lm_eval.tasks import TaskManager, get_task_dict
            except ImportError as err:
                raise LMEvalError("lm-eval tasks need the lmeval extra: pip install 'evomerge[lmeval]'") from err
            name = str(self.task)
            include = None
            path = Path(self.task)
            if path.suffix in (".yaml", ".yml"):
                if not path.is_file():
                    raise LMEvalError(f"lm-eval task file {path} not found")

                named = (load_yaml(path.read_text()) or {}).get("task")
                if not named:
                    raise LMEvalError(f"{path}: an lm-eval task YAML needs a 'task:' name")
                name = str(named)
                include = str(path.parent)
            manager = TaskManager(include_path=include, verbosity="ERROR")
            try:
                tasks = get_task_dict([name], manager)
            except Exception as err:  # lm-eval raises KeyError, ValueError, dataset errors ...
                raise LMEvalError(f"lm-eval could not build task {name!r}: {err}") from err
            if len(tasks) != 1:
                raise LMEvalError(f"{name!r} is a group of {len(tasks)} tasks; give one task")
            self._task_dict = tasks
        return self._task_dict

    def items(self) -> list[Item]:
        """The task's evaluation documents as items (ids are lm-eval doc ids)."""
        task = next(iter(self.task_dict().values()))
        return [Item(str(i), str(task.doc_to_text(doc)), meta={"doc": doc}) for i, doc in enumerate(task.eval_docs)]

    def _wrap(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> Any:
        """lm-eval's HFLM around the live model: built once per model object, never reloaded."""
        if self._lm is None or self._lm[0] != id(model):
            lm = _live_hflm()(
                pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size, add_bos_token=self.add_bos_token
            )
            self._lm = (id(model), lm)
        return self._lm[1]

    def score(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: Sequence[Item]) -> list[float]:
        from lm_eval import evaluator

        doc_ids = [int(it.id) for it in items]
        results = evaluator.evaluate(
            self._wrap(model, tokenizer),
            self.task_dict(),
            samples={self.name: doc_ids},
            log_samples=True,
            verbosity="ERROR",
        )
        samples = results["samples"][self.name]
        metric = self.metric or _first_metric(samples)
        by_doc = {}
        for sample in samples:
            if metric not in sample:
                raise LMEvalError(f"task {self.name!r} logs no metric {metric!r}; it logs {_metrics(sample)}")
            by_doc[int(sample["doc_id"])] = float(sample[metric])
        return [by_doc[i] for i in doc_ids]


def jsonl_task_yaml(
    name: str,
    data_file: str | Path,
    *,
    max_new_tokens: int = 32,
    until: Sequence[str] = ("\n",),
    metric: str = "exact_match",
) -> str:
    """An lm-eval generation task over a local JSONL file of ``question``/``answer`` rows:
    runs offline, and lets the same items go through lm-eval and through our scorers."""
    import yaml

    return yaml.safe_dump(
        {
            "task": name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data_file)}},
            "test_split": "test",
            "output_type": "generate_until",
            "doc_to_text": "{{question}}",
            "doc_to_target": "{{answer}}",
            "generation_kwargs": {"until": list(until), "do_sample": False, "max_gen_toks": max_new_tokens},
            "metric_list": [{"metric": metric, "aggregation": "mean", "higher_is_better": True}],
        },
        sort_keys=False,
    )


_SAMPLE_FIELDS = {
    "doc_id",
    "doc",
    "target",
    "arguments",
    "resps",
    "filtered_resps",
    "filter",
    "metrics",
    "doc_hash",
    "prompt_hash",
    "target_hash",
}


def _metrics(sample: dict[str, Any]) -> list[str]:
    return [k for k, v in sample.items() if k not in _SAMPLE_FIELDS and isinstance(v, int | float)]


def _first_metric(samples: list[dict[str, Any]]) -> str:
    if not samples:
        raise LMEvalError("lm-eval returned no samples for the requested documents")
    found = _metrics(samples[0])
    if not found:
        raise LMEvalError(f"no per-sample metric in lm-eval's logged samples (fields: {sorted(samples[0])})")
    return found[0]


def _live_hflm() -> type:
    """lm-eval's ``HFLM`` whose greedy ``generate_until`` runs on the run's generation engine
    (``output.generation``): stop strings end rows during decoding, finished rows leave the
    batch, and ``compiled`` replays its captured step. Sampling, other generation options and
    the ``hf`` engine keep lm-eval's own path (transformers' ``generate``)."""
    from lm_eval.models.huggingface import HFLM

    from .decoding import StopCheck
    from .generation import engine_name, generation_ready, resolve_engine

    class LiveHFLM(HFLM):
        def _model_generate(
            self, context: torch.Tensor, max_length: int, stop: list[str], **kwargs: Any
        ) -> torch.Tensor:
            options = {k: v for k, v in kwargs.items() if k != "attention_mask"}
            greedy = not options.pop("do_sample", False) and not options.pop("temperature", 0.0)
            name = engine_name(self.model)
            if not greedy or options or name == "hf":
                return super()._model_generate(context, max_length, stop, **kwargs)
            mask = kwargs.get("attention_mask")
            keep = mask.bool() if mask is not None else torch.ones_like(context, dtype=torch.bool)
            rows = [row[k].tolist() for row, k in zip(context, keep, strict=True)]
            new = max_length - context.shape[1]
            with generation_ready(self.tokenizer):
                answers = resolve_engine(name, self.model).decode(
                    self.model, rows, new, StopCheck(self.tokenizer, stop)
                )
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            out = torch.full((len(rows), max_length), pad, dtype=context.dtype, device=context.device)
            out[:, : context.shape[1]] = context
            for i, answer in enumerate(answers):
                out[i, context.shape[1] : context.shape[1] + len(answer)] = torch.tensor(answer, dtype=context.dtype)
            return out

    return LiveHFLM
