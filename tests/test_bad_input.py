"""Bad input, as a new user gives it, through the real `evomerge run`: each case is one
line naming the file, row or tensor, exit 2, no traceback, and no run directory left."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file, save_file

from evomerge.config import ConfigError
from evomerge.loader import load_config
from helpers import cli, small_config

pytestmark = pytest.mark.slow  # end-to-end: `make check` skips it, `make test` (CI) runs it


def _copy_model(demo_family: Path, out: Path) -> Path:
    shutil.copytree(demo_family / "models" / "greek", out)
    return out


def _nan(demo_family: Path, out: Path) -> Path:
    model = _copy_model(demo_family, out)
    state = load_file(model / "model.safetensors")
    state["model.layers.1.self_attn.q_proj.weight"][2, 3] = float("nan")
    save_file(state, model / "model.safetensors", metadata={"format": "pt"})
    return model


def _truncated(demo_family: Path, out: Path) -> Path:
    model = _copy_model(demo_family, out)
    file = model / "model.safetensors"
    os.truncate(file, file.stat().st_size // 2)
    return model


def _pickled(demo_family: Path, out: Path) -> Path:
    import torch

    model = _copy_model(demo_family, out)
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    return model


def _other_architecture(demo_family: Path, out: Path) -> Path:
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(demo_family / "models" / "base")
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


MODEL_CASES = {
    "nan": (_nan, re.escape("greek-bad: tensor 'model.layers.1.self_attn.q_proj.weight' holds 1 NaN")),
    "truncated": (_truncated, "model.safetensors is not a readable safetensors file"),
    "pickle-only": (_pickled, re.escape("only pickled weights (pytorch_model.bin)")),
    "architecture": (_other_architecture, "greek-bad has model_type 'gpt2' but"),
    "missing": (None, "greek-bad: not a checkpoint directory"),
}


def _write_rows(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _data_case(case: str, tmp: Path) -> tuple[dict, str]:
    """(task settings, expected message) for one bad data file."""
    good = [json.dumps({"question": f"{i}+1=", "answer": str(i + 1)}) for i in range(20)]
    if case == "malformed-jsonl":
        path = _write_rows(tmp / "bad.jsonl", [*good[:6], '{"question": "7+1=", "answer": "8"', *good[7:]])
        return {"data": str(path)}, re.escape(f"{path}, line 7: not valid JSON")
    if case == "csv-without-answers":
        path = _write_rows(tmp / "bad.csv", ["question,level", *(f"{i}+1=,easy" for i in range(20))])
        return {"data": str(path)}, re.escape(
            f"{path}, row 2: needs 'answer', or 'choices' and 'label'"
        )  # row 1: the header
    if case == "empty":
        path = _write_rows(tmp / "empty.jsonl", [])
        return {"data": str(path)}, re.escape(f"{path}: no rows")
    if case == "loss-without-answers":
        rows = [json.dumps({"question": f"{i}+1=", **({"answer": str(i + 1)} if i % 5 else {})}) for i in range(20)]
        path = _write_rows(tmp / "some.jsonl", rows)
        task = {"data": str(path), "scorer": "loss", "fitness": {"estimator": "full"}}
        return task, re.escape(f"{path}, row 1: needs 'answer'")
    raise AssertionError(case)


def _run(config: dict, tmp: Path, run_dir: Path | None = None) -> subprocess.CompletedProcess:
    path = tmp / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    return cli("run", str(path), "--run-dir", str(run_dir or tmp / "run"), "--no-progress")


def _assert_refused(done: subprocess.CompletedProcess, message: str, tmp: Path) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stdout  # one line
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp / "run").exists()  # nothing left behind


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_a_bad_model_is_one_line_and_leaves_nothing(case, demo_family, tmp_path):
    make, message = MODEL_CASES[case]
    bad = tmp_path / "greek-bad"
    if make is not None:
        make(demo_family, bad)
    config = small_config(demo_family)
    config["models"]["endpoints"] = ["demo:models/add", str(bad)]
    _assert_refused(_run(config, tmp_path), message, tmp_path)


@pytest.mark.parametrize("case", ["malformed-jsonl", "csv-without-answers", "empty", "loss-without-answers"])
def test_bad_task_data_is_one_line_and_leaves_nothing(case, demo_family, tmp_path):
    config = small_config(demo_family)
    task, message = _data_case(case, tmp_path)
    config["tasks"] = [{k: v for k, v in config["tasks"][0].items() if k not in ("search", "test")} | task]
    _assert_refused(_run(config, tmp_path), message, tmp_path)


def test_a_loss_task_with_an_irt_estimator_is_refused_by_the_config(demo_family, tmp_path):
    config = small_config(demo_family)
    config["tasks"][0]["scorer"] = "loss"
    done = _run(config, tmp_path)
    assert done.returncode == 2 and "scorer loss gives a value per item" in done.stdout
    assert not (tmp_path / "run").exists()


def test_an_unknown_device_is_refused_by_the_config(demo_family, tmp_path):
    done = _run(small_config(demo_family) | {"output": {"device": "gpu"}}, tmp_path)
    assert done.returncode == 2 and "device 'gpu': use cpu, cuda or cuda:N" in done.stdout
    assert not (tmp_path / "run").exists()


def test_a_run_directory_under_a_read_only_parent_is_a_clear_error(demo_family, tmp_path):
    """As root (CI), a read-only tmpfs (root writes through permission bits); otherwise a
    directory without write permission."""
    parent = tmp_path / "locked"
    parent.mkdir()
    mounted = False
    if os.geteuid() == 0:
        command = ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(parent)]
        if shutil.which("mount") is None or subprocess.run(command, capture_output=True).returncode:
            pytest.skip("as root, a read-only directory needs a read-only mount, and none could be made")
        mounted = True
    else:
        parent.chmod(0o500)
    try:
        done = _run(small_config(demo_family), tmp_path, parent / "run")
    finally:
        if mounted:
            subprocess.run(["umount", str(parent)], check=False)
    assert done.returncode == 2 and "writable" in done.stdout, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr and len(done.stdout.strip().splitlines()) == 1


def test_report_on_a_damaged_store_is_a_clear_error(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.sqlite").write_bytes(b"this is not a database" * 100)
    done = cli("report", str(run_dir))
    assert done.returncode == 2 and "run.sqlite is not a readable run store" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_concurrent_atomic_writes_of_one_file_never_collide(tmp_path):
    """Each writer has its own temp file: the last rename wins, whole; no writer fails."""
    from concurrent.futures import ThreadPoolExecutor

    from evomerge.models.save import write_text_atomically

    target = tmp_path / "results.json"
    texts = [json.dumps({"writer": i, "pad": "x" * 100_000}) for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda text: write_text_atomically(target, text), texts))
    assert target.read_text() in texts and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_revision_for_a_model_not_in_the_config_is_refused():
    config = {"models": {"base": "org/base", "endpoints": ["org/a", "org/b"], "revision": {"org/c": "v1"}}}
    with pytest.raises(ConfigError, match=r"revision names \['org/c'\]"):
        load_config({**config, "tasks": [{"name": "t", "data": "x.jsonl"}]}, resolve_demo=False)
