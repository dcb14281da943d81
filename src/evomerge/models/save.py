"""Writing a merged model as an ordinary Hugging Face checkpoint, without losing data.

The checkpoint is written into a temporary sibling and renamed into place once
complete, so a crash leaves either nothing or a whole checkpoint. An existing
non-empty directory is refused unless the caller forces it; it is then replaced
only after the new checkpoint is complete.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..errors import EvomergeError
from .checkpoint import SAFETENSORS_DTYPES


class OutputExistsError(EvomergeError):
    """The output directory holds files, and overwriting them was not asked for."""


def write_atomically(out: Path | str, write: Callable[[Path], None], *, force: bool = False) -> Path:
    """Call ``write(tmp_dir)``, then move the result to ``out``."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputExistsError(f"{out} exists and is not empty; choose another --out, or pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def model_card(config_yaml: str, title: str = "merged model", *, note: str = "", models: Sequence[str] = ()) -> str:
    """The README of a merged checkpoint: Hugging Face metadata (``base_model`` for the
    models that are hub ids, ``base_model_relation: merge``), the recipe and ``note``."""
    hub = list(dict.fromkeys(m for m in models if _is_hub_id(m)))
    meta = "library_name: transformers\ntags:\n- merge\n- evomerge\n"
    if hub:
        meta += "base_model:\n" + "".join(f"- {m}\n" for m in hub) + "base_model_relation: merge\n"
    return (
        f"---\n{meta}---\n# {title}\n\n"
        "Merged in memory with evomerge (mergekit-compatible semantics) from this configuration:\n\n"
        f"```yaml\n{config_yaml.rstrip()}\n```\n" + (f"\n{note}\n" if note else "")
    )


def _is_hub_id(model: str) -> bool:
    """``owner/name`` that is not a local path: what the hub's ``base_model`` can link."""
    return re.fullmatch(r"[\w.-]+/[\w.-]+", model) is not None and not Path(model).exists()


class SafetensorsStream:
    """Writes a checkpoint's tensors one at a time, in the order they are declared, so a
    merge streamed to disk never holds more than one merged tensor.

    The safetensors header lists every tensor's dtype, shape and byte range up front;
    those are known before any tensor is merged, so the header is written first and
    each tensor's bytes are appended as they come. Shards of ``max_shard_bytes`` get a
    ``model.safetensors.index.json``, as ``save_pretrained`` writes them.
    """

    def __init__(
        self,
        out_dir: Path,
        entries: list[tuple[str, tuple[int, ...], torch.dtype]],
        *,
        max_shard_bytes: int = 5 * 10**9,
    ) -> None:
        names = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
        shards: list[list[tuple[str, tuple[int, ...], torch.dtype, int]]] = [[]]
        size = 0
        for name, shape, dtype in entries:
            nbytes = math.prod(shape) * dtype.itemsize
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append((name, shape, dtype, nbytes))
            size += nbytes
        self.out_dir = out_dir
        self._where: dict[str, tuple[Path, int]] = {}
        self._files: list[Path] = []
        total = len(shards)
        for k, shard in enumerate(shards, start=1):
            file = out_dir / ("model.safetensors" if total == 1 else f"model-{k:05d}-of-{total:05d}.safetensors")
            header: dict[str, object] = {"__metadata__": {"format": "pt"}}
            offset = 0
            for name, shape, dtype, nbytes in shard:
                header[name] = {"dtype": names[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
                offset += nbytes
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)
            with open(file, "wb") as f:
                f.write(struct.pack("<Q", len(raw)) + raw)
                f.truncate(8 + len(raw) + offset)
            start = 8 + len(raw)
            for name, _, _, _ in shard:
                begin = header[name]["data_offsets"][0]  # type: ignore[index]
                self._where[name] = (file, start + begin)
            self._files.append(file)
        if total > 1:
            index = {
                "metadata": {"total_size": sum(e[3] for s in shards for e in s)},
                "weight_map": {name: file.name for name, (file, _) in self._where.items()},
            }
            (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))

    def write(self, name: str, tensor: torch.Tensor) -> None:
        file, offset = self._where[name]
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        with open(file, "r+b") as f:
            f.seek(offset)
            f.write(data.data)
