"""``python -m evomerge``: the same command line as ``evomerge``."""

from .cli import app

app(prog_name="evomerge")
