"""One checkpoint on disk, read lazily.

``.safetensors`` files are memory-mapped, so opening a 7B checkpoint costs no RAM
until a tensor is asked for. ``Checkpoint.read`` copies one tensor with ``pread``
instead: the merge engine reads every tensor of every model, and mapped pages would
stay in the process's resident memory (counted against it by the kernel and by
cgroup limits) until the file is closed. Pickled ``.bin`` files can execute code when
loaded, so they are read only when the caller opts in with ``allow_pickle=True``.
"""

from __future__ import annotations

import json
import math
import os
import struct
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from ..errors import CheckpointError

#: safetensors dtype names -> torch dtypes (the ones checkpoints use)
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_HUB_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]


def resolve(name_or_path: str | Path, *, revision: str | None = None, trust_remote_code: bool = False) -> Path:
    """A local directory as is; anything else is taken for a hub id and downloaded (cached),
    at ``revision`` (a branch, tag or commit; default: main). The repository's Python
    files come along only with ``trust_remote_code``."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") > 1:
        raise CheckpointError(f"{name_or_path}: not a checkpoint directory (expected a folder with config.json)")
    from huggingface_hub import snapshot_download

    patterns = [*_HUB_FILES, "*.py"] if trust_remote_code else _HUB_FILES
    try:
        _hub_reachable(str(name_or_path), revision)
        return Path(snapshot_download(str(name_or_path), revision=revision, allow_patterns=patterns))
    except Exception as err:  # the hub client raises many types; all mean "could not get it"
        try:  # what an earlier download left in the hub's cache serves offline
            return Path(snapshot_download(str(name_or_path), revision=revision, local_files_only=True))
        except Exception:
            pass
        raise CheckpointError(
            f"{name_or_path}: no such local directory, and it could not be fetched from the Hugging Face hub ({err})"
        ) from err


def hub_timeout() -> float:
    """Seconds the hub may take to answer before a run gives up: ``$EVOMERGE_HUB_TIMEOUT``, default 60."""
    return float(os.environ.get("EVOMERGE_HUB_TIMEOUT", "60"))


def _hub_reachable(repo_id: str, revision: str | None) -> None:
    """Ask the hub about ``repo_id`` with an overall deadline. The client's own timeouts
    apply per request and its retries multiply them: behind a proxy that stalls, a run
    waited over 400 s before failing. The question runs in a daemon thread, which a
    process may leave behind when it gives up."""
    import threading

    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        return  # snapshot_download reads the cache
    outcome: list[BaseException | None] = []

    def ask() -> None:
        try:
            HfApi().repo_info(repo_id, revision=revision, timeout=hub_timeout())
            outcome.append(None)
        except BaseException as err:  # reported to the caller's thread
            outcome.append(err)

    thread = threading.Thread(target=ask, daemon=True, name="evomerge-hub")
    thread.start()
    thread.join(hub_timeout())
    if not outcome:
        raise TimeoutError(
            f"the hub did not answer within {hub_timeout():.0f} s (a proxy or network that stalls?); "
            "set HF_HUB_OFFLINE=1 to use only models already downloaded, or EVOMERGE_HUB_TIMEOUT to wait longer"
        )
    if outcome[0] is not None:
        raise outcome[0]


def needs_remote_code(config: dict[str, Any]) -> str:
    """Why loading a model with this config.json would run the repository's own code
    (``""`` if it would not): an ``auto_map``, or a model type transformers does not know."""
    from transformers import CONFIG_MAPPING

    if config.get("auto_map"):
        return f"auto_map {sorted(config['auto_map'])}"
    model_type = config.get("model_type")
    if model_type and model_type not in CONFIG_MAPPING:
        return f"model_type {model_type!r}, which this transformers does not know"
    return ""


class Checkpoint:
    """A model's config and tensors, by name, without loading them all."""

    def __init__(self, name: str, path: Path, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> None:
        self.name = name
        self.path = path
        self.trust_remote_code = trust_remote_code
        if not (path / "config.json").exists():
            raise CheckpointError(f"{name}: {path} has no config.json; is it a Hugging Face model directory?")
        self.config: dict[str, Any] = json.loads((path / "config.json").read_text())
        if needs_remote_code(self.config) and not trust_remote_code:
            raise CheckpointError(
                f"{name}: its config.json asks for the repository's own model code "
                f"({needs_remote_code(self.config)}). evomerge runs no downloaded code unless you opt in: set "
                "models.trust_remote_code: true (--trust-remote-code for evomerge merge) if you trust its source."
            )
        self._handles: dict[Path, Any] = {}
        self._pickled: dict[Path, dict[str, torch.Tensor]] = {}
        self._headers: dict[Path, tuple[int, dict[str, Any]]] = {}
        self._files = self._index(allow_pickle)

    @classmethod
    def open(
        cls,
        name_or_path: str | Path,
        *,
        allow_pickle: bool = False,
        revision: str | None = None,
        trust_remote_code: bool = False,
    ) -> Checkpoint:
        path = resolve(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
        return cls(str(name_or_path), path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)

    def _index(self, allow_pickle: bool) -> dict[str, Path]:
        """Map every tensor name to the file that holds it."""
        index = self.path / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = {name: self.path / file for name, file in weight_map.items()}
            pickled = sorted({f.name for f in files.values() if f.suffix != ".safetensors"})
            if pickled and not allow_pickle:
                raise CheckpointError(
                    f"{self.name}: {index.name} points at pickled shards ({pickled[0]}); loading them can run "
                    "arbitrary code. Convert the model to .safetensors, or opt in with allow_pickle=True "
                    "(--allow-pickle) if you trust its source."
                )
            return files
        shards = sorted(self.path.glob("*.safetensors"))
        if shards:
            found: dict[str, Path] = {}
            for shard in shards:
                with self._opened(shard) as f:
                    found.update(dict.fromkeys(f.keys(), shard))
            return found
        pickled = sorted(self.path.glob("*.bin")) + sorted(self.path.glob("*.pt"))
        if not pickled:
            raise CheckpointError(f"{self.name}: no .safetensors or .bin weights in {self.path}")
        if not allow_pickle:
            raise CheckpointError(
                f"{self.name}: only pickled weights ({pickled[0].name}); loading them can run arbitrary code. "
                "Convert the model to .safetensors, or opt in with allow_pickle=True (--allow-pickle) "
                "if you trust its source."
            )
        files = {}
        for file in pickled:
            self._pickled_file(file, files)
        return files

    def _pickled_file(self, file: Path, files: dict[str, Path] | None = None) -> dict[str, torch.Tensor]:
        if file not in self._pickled:
            self._pickled[file] = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        if files is not None:
            files.update(dict.fromkeys(self._pickled[file], file))
        return self._pickled[file]

    @cached_property
    def tensor_names(self) -> list[str]:
        return sorted(self._files)

    def shape(self, name: str) -> tuple[int, ...]:
        file = self._file(name)
        if file.suffix != ".safetensors":
            return tuple(self._pickled_file(file)[name].shape)
        return tuple(self._handle(file).get_slice(name).get_shape())

    def tensor(self, name: str) -> torch.Tensor:
        file = self._file(name)
        if file.suffix != ".safetensors":
            return self._pickled_file(file)[name]
        return self._handle(file).get_tensor(name)

    def dtype(self, name: str) -> torch.dtype:
        file = self._file(name)
        if file.suffix != ".safetensors":
            return self._pickled_file(file)[name].dtype
        return SAFETENSORS_DTYPES[self._header(file)[1][name]["dtype"]]

    def dtype_name(self, name: str) -> str:
        """The tensor's dtype as its file spells it (``BF16``, ``F8_E4M3``; pickles: ``torch.float16``),
        known to torch or not."""
        file = self._file(name)
        if file.suffix != ".safetensors":
            return str(self._pickled_file(file)[name].dtype)
        return str(self._header(file)[1][name]["dtype"])

    def read(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """A copy of one tensor, read with ``pread`` into ``out`` (CPU, contiguous, this
        tensor's dtype and size) or a new tensor: no page of the file stays mapped."""
        file = self._file(name)
        if file.suffix != ".safetensors":
            source = self._pickled_file(file)[name]
            return source.clone() if out is None else out.view(source.shape).copy_(source)
        start, header = self._header(file)
        entry = header[name]
        shape, (begin, end) = tuple(entry["shape"]), entry["data_offsets"]
        dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        tensor = torch.empty(shape, dtype=dtype) if out is None else out.view(shape)
        buffer = tensor.reshape(-1).view(torch.uint8).numpy().data
        if len(buffer) != end - begin:
            raise CheckpointError(
                f"{self.name}: tensor {name!r} has {end - begin} bytes on disk, {len(buffer)} expected"
            )
        fd = os.open(file, os.O_RDONLY)
        try:
            done = 0
            while done < len(buffer):
                got = os.preadv(fd, [buffer[done:]], start + begin + done)
                if got <= 0:
                    raise CheckpointError(
                        f"{self.name}: {file.name} ends inside tensor {name!r}; the file is truncated"
                    )
                done += got
        finally:
            os.close(fd)
        return tensor

    def _header(self, file: Path) -> tuple[int, dict[str, Any]]:
        """(where the data starts, the header) of a safetensors file."""
        if file not in self._headers:
            self._opened(file)  # checks the file as a whole
            with open(file, "rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                self._headers[file] = (8 + size, json.loads(f.read(size)))
        return self._headers[file]

    def numel(self, name: str) -> int:
        return math.prod(self.shape(name))

    def _file(self, name: str) -> Path:
        try:
            return self._files[name]
        except KeyError:
            raise CheckpointError(f"{self.name}: no tensor named {name!r}") from None

    def _handle(self, file: Path) -> Any:
        if file not in self._handles:
            self._handles[file] = self._opened(file)
        return self._handles[file]

    def _opened(self, file: Path) -> Any:
        """``safe_open``, its errors (a truncated or corrupt file) as a ``CheckpointError``."""
        try:
            return safe_open(file, framework="pt")
        except (SafetensorError, OSError) as err:
            raise CheckpointError(
                f"{self.name}: {file.name} is not a readable safetensors file ({err}); it may be truncated "
                "(an interrupted download or copy): fetch or copy it again"
            ) from None

    def __repr__(self) -> str:
        return f"Checkpoint({self.name!r}, {len(self._files)} tensors)"
