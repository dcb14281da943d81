"""``evomerge gui``: a browser front end over the library (``pip install 'evomerge[gui]'``).

It holds no experiment logic: the form is validated by the same pydantic config as the
CLI, a launched run is ``evomerge run`` in its own process writing the same run
directory, and the monitor reads the run store (``search.monitor``).
"""

from .app import build_app, serve

__all__ = ["build_app", "serve"]
