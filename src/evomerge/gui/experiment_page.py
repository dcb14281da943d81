"""What the New-experiment page does: presets into the form, the form's messages under its
fields, a pasted config loaded back, an uploaded data file made a task, and Launch (the
config's checks, then the pre-flight of its models and data, then the run's process)."""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from ..errors import EvomergeError
from ..search.monitor import run_dirs
from ..yamltext import load_yaml
from .form import (
    FIELD_KEYS,
    YAML_BOXES,
    box_problems,
    compose,
    field_text,
    form_values,
    preset_config,
    problems_by_field,
    validate,
)
from .launcher import Launcher


class ExperimentPage:
    """The New-experiment page's callbacks, over the runs directory its launcher serves."""

    def __init__(self, runs: Path, launcher: Launcher, scratch: Path) -> None:
        self.runs, self.launcher, self.scratch = runs, launcher, scratch

    def fill(self, preset: str) -> tuple[Any, ...]:
        """A preset into the form; it becomes what the form's fields are written over."""
        raw = preset_config(preset)
        return (*form_values(raw), raw)

    @staticmethod
    def messages(problems: list[tuple[str, str]], ok: str = "") -> tuple[str, ...]:
        """A message under each field with a problem, the others under the form; as text
        (a YAML error quotes ``<stream end>``, which Markdown would take for a tag)."""
        fields, rest = problems_by_field(problems)
        under = [f"**{_escaped('; '.join(fields[f]))}**" if f in fields else "" for f in FIELD_KEYS]
        return (*under, "\n".join(f"- {_escaped(line)}" for line in rest) if rest else ok)

    def check(self, text: str, *boxes: str) -> tuple[Any, ...]:
        """Every edit: the messages by the fields (a YAML box that does not parse first), and
        the download button holds the YAML shown."""
        return (*self.messages(box_problems(*boxes) + validate(text)[1]), self.download(text))

    def paste(self, text: str) -> tuple[Any, ...]:
        """The YAML view, pasted or edited, back into the form (if it is a valid config); the
        keys the form has no field for are kept (it becomes what the fields are written over)."""
        import gradio as gr

        raw, _ = validate(text)
        if raw is None:
            keep = (gr.update() for _ in range(len(FIELD_KEYS) + 1))
            return (*keep, "**Not loaded**: see the messages under the fields.")
        return (*form_values(raw), raw, "Loaded into the form.")

    def download(self, text: str) -> str:
        path = self.scratch / "evomerge-config.yaml"  # Gradio serves a copy of it, taken now
        path.write_text(text)
        return str(path)

    def upload(self, file: str | None, tasks_text: str) -> str:
        """An uploaded JSONL/CSV file, kept under the runs directory, added as a task."""
        if not file:
            return tasks_text
        source = Path(file)
        kept = unused_path((self.runs / "uploads" / source.name).resolve(), source)
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, kept)
        try:
            tasks_list = load_yaml(field_text(tasks_text)) or []
        except yaml.YAMLError:
            tasks_list = None  # the box's text is kept as typed, the new task added below it
        listed = tasks_list if isinstance(tasks_list, list) else []
        names = {t.get("name") for t in listed if isinstance(t, dict)}
        name = re.sub(r"\W+", "_", source.stem).strip("_") or "task"
        name = next(n for n in (name, *(f"{name}_{i}" for i in range(2, 1000))) if n not in names)
        task = {"name": name, "data": str(kept), "scorer": "generation", "extractor": "number"}
        if not isinstance(tasks_list, list) and field_text(tasks_text):
            return field_text(tasks_text) + "\n" + yaml.safe_dump([task], sort_keys=False, allow_unicode=True)
        return yaml.safe_dump([*listed, task], sort_keys=False, allow_unicode=True)

    def launch(self, text: str, name: str, base: dict[str, Any], *form: Any) -> tuple[Any, ...]:
        """The config the form's fields make (``compose`` over ``base``), as the YAML view
        shows it. Refused while a YAML box does not parse, while the view shows something
        else (a field's edit not yet written into it, or the view edited without Load: the
        page must not run what it does not show), and while a model folder or data file
        would stop the run as it loads."""
        import gradio as gr

        composed = compose(base, *form)
        boxes = [form[list(FIELD_KEYS).index(box)] for box in YAML_BOXES]
        raw, problems = validate(composed)
        problems = box_problems(*boxes) + problems
        differs = _parsed(text) != _parsed(composed)
        if differs:
            problems += [p for p in validate(text)[1] if p not in problems]
        if not problems and differs:
            return (*self.messages([])[:-1], f"**Not started.** {NOT_SHOWN}", gr.update())
        if not problems:
            assert raw is not None  # validated above
            problems = self._preflight(raw)
        if problems:
            *under, rest = self.messages(problems)
            return (*under, f"**Not started.** {rest or 'See the messages under the fields.'}", gr.update())
        name = field_text(name) or "gui-run"
        assert raw is not None
        try:
            run_dir = self.launcher.start(raw, name)
        except EvomergeError as err:
            return (*self.messages([])[:-1], f"**Not started.** {_escaped(str(err))}", gr.update())
        names = [name, *(d.name for d in run_dirs(self.runs) if d.name != name)]
        started = f"Started **{name}** in `{run_dir}`; follow it on Monitor."
        return (*self.messages([])[:-1], started, gr.update(choices=names, value=name))

    def _preflight(self, raw: dict[str, Any]) -> list[tuple[str, str]]:
        """The pre-flight on the config as the run will read it (relative paths from where
        the GUI runs, ``demo:`` paths resolved)."""
        import copy

        from ..loader import load_config, resolve_relative_paths
        from ..preflight import preflight

        resolved = copy.deepcopy(raw)
        resolve_relative_paths(resolved, Path.cwd())
        try:
            return preflight(load_config(resolved))
        except EvomergeError as err:
            return [("config", str(err))]


#: Why Launch refused a config the form and the YAML view disagree on.
NOT_SHOWN = (
    "The config below is not what the form's fields say (an edit was still being written into it, or the YAML "
    "was edited without Load). Press **Load this YAML into the form** to run the YAML, or edit a field to run "
    "the form; then Launch."
)


def _parsed(text: str) -> Any:
    try:
        return load_yaml(text)
    except yaml.YAMLError:
        return None


#: After Launch: the first message under a field scrolled into view (the summary sits far below).
SCROLL_TO_PROBLEM = """() => {
  const first = [...document.querySelectorAll('.field-error')].find(e => e.innerText.trim());
  if (first) first.scrollIntoView({block: 'center'});
}"""


def _escaped(text: str) -> str:
    return html.escape(text, quote=False)


def unused_path(path: Path, source: Path) -> Path:
    """``path``, or ``name_2.ext``, ... where a different file is there already: an earlier
    upload of the same name may be the data of a run, which must not change under it."""
    import filecmp

    for i in range(1, 10_000):
        candidate = path if i == 1 else path.with_name(f"{path.stem}_{i}{path.suffix}")
        if not candidate.exists() or filecmp.cmp(candidate, source, shallow=False):
            return candidate
    raise EvomergeError(f"too many uploads named {path.name} in {path.parent}")
