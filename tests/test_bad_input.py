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

    from evomerge.atomic import write_text_atomically

    target = tmp_path / "results.json"
    texts = [json.dumps({"writer": i, "pad": "x" * 100_000}) for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda text: write_text_atomically(target, text), texts))
    assert target.read_text() in texts and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_revision_for_a_model_not_in_the_config_is_refused():
    config = {"models": {"base": "org/base", "endpoints": ["org/a", "org/b"], "revision": {"org/c": "v1"}}}
    with pytest.raises(ConfigError, match=r"revision names \['org/c'\]"):
        load_config({**config, "tasks": [{"name": "t", "data": "x.jsonl"}]}, resolve_demo=False)


# Issue 30: inputs that used to leave a traceback and a run directory behind, or a wrong score.


def _edited_base(demo_family: Path, out: Path, **changes: object) -> Path:
    model = shutil.copytree(demo_family / "models" / "base", out)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | changes))
    return model


def _weight_as(demo_family: Path, out: Path, member: str, dtype_name: str) -> Path:
    import torch

    model = shutil.copytree(demo_family / "models" / member, out)
    state = load_file(model / "model.safetensors")
    name = "model.layers.1.mlp.up_proj.weight"
    state[name] = (state[name] * 100).to(getattr(torch, dtype_name))
    save_file(state, model / "model.safetensors", metadata={"format": "pt"})
    return model


def _with_base(config: dict, model: Path) -> dict:
    return config | {"models": config["models"] | {"base": str(model)}}


def _with_endpoint(config: dict, model: Path) -> dict:
    return config | {"models": config["models"] | {"endpoints": ["demo:models/add", str(model)]}}


TENSOR = r"tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"
CONFIG_CASES = {
    "seed-negative": (lambda c, fam, tmp: c | {"seed": -1}, r"seed: Input should be greater than or equal to 0"),
    "seed-too-large": (
        lambda c, fam, tmp: c | {"seed": 2**32},
        r"seed: Input should be less than or equal to 4294967295",
    ),
    "task-name-too-long": (
        lambda c, fam, tmp: c | {"tasks": [c["tasks"][0] | {"name": "x" * 300}]},
        r"task 'x+'\.\.\. is 300 bytes long: the file system .* allows file names up to 255 bytes",
    ),
    "heads-disagree": (
        lambda c, fam, tmp: _with_base(c, _edited_base(fam, tmp / "b", num_attention_heads=3, num_key_value_heads=3)),
        r"b: its config.json does not describe a model transformers can build \(ValueError: The hidden size",
    ),
    "intermediate-size-disagrees": (
        lambda c, fam, tmp: _with_base(c, _edited_base(fam, tmp / "b", intermediate_size=392)),
        r"b: tensor 'model\.layers\.0\.mlp\.down_proj\.weight' has shape \[128, 384\] "
        r"but its config.json implies \[128, 392\]",
    ),
    "int64-endpoint": (
        lambda c, fam, tmp: _with_endpoint(c, _weight_as(fam, tmp / "g", "greek", "int64")),
        rf"g: {TENSOR} holds I64 weights \(integers or bools\)",
    ),
    "int64-base": (
        lambda c, fam, tmp: _with_base(c, _weight_as(fam, tmp / "b", "base", "int64")),
        rf"b: {TENSOR} holds I64 weights",
    ),
    "uint32-endpoint": (
        lambda c, fam, tmp: _with_endpoint(c, _weight_as(fam, tmp / "g", "greek", "uint32")),
        rf"g: {TENSOR} holds U32 weights \(integers or bools\)",
    ),
    "fp8-base": (
        lambda c, fam, tmp: _with_base(c, _weight_as(fam, tmp / "b", "base", "float8_e4m3fn")),
        rf"b: {TENSOR} holds F8_E4M3 weights \(8-bit floats, a quantized format\); evomerge merges floating-point",
    ),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_a_config_or_model_the_run_used_to_fail_on_is_one_line_and_leaves_nothing(case, demo_family, tmp_path):
    """Each case used to print a traceback deep in the run (numpy's seed, a file name too
    long, transformers' loading report) or score 0.0 silently (integer weights), and leave
    .lock, config.yaml and run.sqlite, so the corrected command was refused. Now each is
    refused before the run directory exists; the corrected command then runs."""
    edit, message = CONFIG_CASES[case]
    config = small_config(demo_family, generations=1)
    _assert_refused(_run(edit(config, demo_family, tmp_path), tmp_path), message, tmp_path)
    if case == "seed-negative":  # one corrected command, run where the refused one would have
        fixed = _run(config, tmp_path)
        assert fixed.returncode == 0 and "held-out test scores" in fixed.stdout, fixed.stdout + fixed.stderr


def _bomb(levels: int) -> str:
    """A "billion laughs" under merge.parameters: each level lists the one below 9 times."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "merge:\n  method: linear\n  parameters:\n" + "".join(f"    {line}\n" for line in lines)


def test_a_yaml_alias_bomb_is_refused_at_once_in_bounded_memory(demo_family, tmp_path):
    """Nine levels of nine aliases expand to 9^9 (387 million) strings when the config is
    copied or written out; it used to grow to gigabytes. It is refused while parsing: within
    2 s and 20 MB of Python allocations, one line, no run directory."""
    import time
    import tracemalloc

    config = yaml.safe_dump({k: v for k, v in small_config(demo_family).items() if k != "merge"})
    path = tmp_path / "bomb.yaml"
    path.write_text(config + _bomb(9))
    tracemalloc.start()
    started = time.perf_counter()
    try:
        done = cli("run", str(path), "--run-dir", str(tmp_path / "run"), "--no-progress")
        elapsed, (_, peak) = time.perf_counter() - started, tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    _assert_refused(done, r"its anchors and aliases \(&name / \*name\) expand to over 100,000 values", tmp_path)
    assert elapsed < 2 and peak < 20 * 2**20, (elapsed, peak)
    shared = config + "merge:\n  method: linear\n  parameters:\n    weight: &w 0.5\n    again: *w\n"
    from evomerge.yamltext import load_yaml

    assert load_yaml(shared)["merge"]["parameters"] == {"weight": 0.5, "again": 0.5}  # anchors stay usable


def test_an_error_evomerge_did_not_foresee_is_one_line_and_leaves_nothing(demo_family, tmp_path, monkeypatch):
    """A bug inside the run (here the search raising a plain RuntimeError, the stand-in for
    one; every input known to cause one is refused earlier) leaves no run directory, and
    the CLI prints one line naming the error; -v adds the traceback."""
    import evomerge.search.experiment as experiment

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(experiment, "_run", broken)
    done = _run(small_config(demo_family), tmp_path)
    message = r"error: RuntimeError: a bug over two lines \(evomerge did not foresee this error: -v shows where"
    _assert_refused(done, message, tmp_path)
    verbose = cli("-v", "run", str(tmp_path / "exp.yaml"), "--run-dir", str(tmp_path / "run"), "--no-progress")
    assert verbose.returncode == 2 and "Traceback" in verbose.stdout and not (tmp_path / "run").exists()


def test_resuming_a_run_that_stopped_before_its_first_evaluation_says_what_to_do(demo_family, tmp_path):
    """A directory an older evomerge left (seed -1 stored, no evaluation): resume used to
    repeat the traceback; now one line says to remove it and start again."""
    from evomerge.search.rundir import RunDir

    rd = RunDir(tmp_path / "left")
    rd.path.mkdir()
    text = yaml.safe_dump(small_config(demo_family) | {"seed": -1})
    rd.config.write_text(text)
    store = rd.open_store()
    store.set("config", text)
    store.close()
    done = cli("resume", str(rd.path), "--no-progress")
    assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    said = " ".join(done.stdout.split())
    assert "seed: Input should be greater than or equal to 0" in said
    assert f"({rd.path} stopped before its first evaluation, so it holds nothing to keep: remove it" in said


def test_a_truncated_run_store_says_what_to_do(finished_run, tmp_path):
    run_dir = shutil.copytree(finished_run.run_dir, tmp_path / "run")
    store = run_dir / "run.sqlite"
    os.truncate(store, store.stat().st_size // 3)
    for command in (["resume", str(run_dir), "--no-progress"], ["export", str(run_dir), "--out", str(tmp_path / "x")]):
        done = cli(*command)
        said = " ".join(done.stdout.split())
        assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
        assert "run.sqlite is not a readable run store" in said and "the file is damaged" in said, said
        assert "evaluations.csv beside it keeps those exported so far; start a new run in another directory" in said


def test_task_data_with_a_byte_order_mark_reads_as_without(tmp_path):
    """Excel and Notepad save CSV (and JSONL) with a UTF-8 BOM; the first column was read
    as '\\ufeffquestion' and the task refused."""
    from evomerge.evaluate.tasks import load_items

    rows = [{"question": f"{i}+1=", "answer": str(i + 1)} for i in range(5)]
    csv_text = "question,answer\n" + "".join(f"{r['question']},{r['answer']}\n" for r in rows)
    jsonl_text = "".join(json.dumps(r) + "\n" for r in rows)
    for name, text in (("bom.csv", csv_text), ("bom.jsonl", jsonl_text)):
        plain, marked = tmp_path / f"plain-{name}", tmp_path / name
        plain.write_text(text, encoding="utf-8")
        marked.write_text(text, encoding="utf-8-sig")
        assert load_items(marked) == load_items(plain) and len(load_items(marked)) == 5


@pytest.fixture
def small_disk(tmp_path):
    """An empty 1 MB tmpfs (CI runs as root; elsewhere the test is skipped)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("this machine refuses to mount a tmpfs")
    yield disk
    subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.parametrize("where", ["full-disk", "mount-point"])
def test_export_onto_a_full_disk_or_a_mount_point_is_one_line_and_leaves_nothing(where, finished_run, small_disk):
    """The 5 MB model onto a 1 MB disk (OSError 28), or --out the mount point itself (its
    rename is refused: OSError 16): a traceback before; now one line with what to do, and
    no partial folder or temp folder, on the disk or beside it."""
    out = small_disk / "model" if where == "full-disk" else small_disk
    done = cli("export", str(finished_run.run_dir), "--out", str(out))
    assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    said = " ".join(done.stdout.split())
    if where == "full-disk":
        assert "No space left on device" in said and "Free some space (or choose another --out) and try again" in said
    else:
        assert "Device or resource busy" in said and "It is a mount point or in use: give a folder inside it" in said
    assert list(small_disk.iterdir()) == [] and sorted(p.name for p in small_disk.parent.iterdir()) == ["disk"]


def test_a_hub_that_does_not_answer_fails_within_the_timeout(demo_family, tmp_path):
    """A hub id behind a proxy that accepts connections and never answers (here a local
    socket standing in for the hub, through HF_ENDPOINT; the real hub is not reached from
    tests): the run used to wait 400+ s; with EVOMERGE_HUB_TIMEOUT=3 it fails in seconds,
    in one line saying what to set."""
    import socket
    import sys
    import threading
    import time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: [held.append(server.accept()[0]) for _ in range(8)], daemon=True).start()
    config = small_config(demo_family)
    config["models"]["endpoints"] = ["demo:models/add", "someone/greek-model"]
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": f"http://127.0.0.1:{server.getsockname()[1]}",
        "HF_HOME": str(tmp_path / "hf"),
        "EVOMERGE_HUB_TIMEOUT": "3",
    }
    command = [sys.executable, "-m", "evomerge", "run", str(path), "--run-dir", str(tmp_path / "run"), "--no-progress"]
    started = time.time()
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    finally:
        server.close()
        for connection in held:
            connection.close()
    assert time.time() - started < 60, "the run waited for the hub beyond its timeout"
    _assert_refused(done, r"someone/greek-model: .*the hub did not answer within 3 s .* set HF_HUB_OFFLINE=1", tmp_path)


def test_endpoints_with_another_vocabulary_run_with_merge_tokenizer_source(demo_family, extended_vocab, tmp_path):
    """The refusal's advice (set tokenizer_source) could not be followed in an experiment
    config; `merge.tokenizer_source: base` now runs, and best/ has the base's vocabulary."""
    config = small_config(demo_family, generations=1, population_size=4)
    config["models"]["endpoints"] = [str(extended_vocab), "demo:models/greek"]
    config["fitness"] = {"estimator": "full"}
    _assert_refused(
        _run(config, tmp_path), r"vocabulary sizes differ .* merge\.tokenizer_source in an experiment config", tmp_path
    )
    config["merge"]["tokenizer_source"] = "base"
    done = _run(config, tmp_path)
    assert done.returncode == 0 and "held-out test scores" in done.stdout, done.stdout + done.stderr
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tmp_path / "run" / "best").vocab_size == 113
    exported = cli("export", str(tmp_path / "run"), "--out", str(tmp_path / "exported"))
    assert (
        exported.returncode == 0
        and "tokenizer_source: base" in (tmp_path / "exported" / "mergekit_config.yml").read_text()
    )
