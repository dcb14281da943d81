"""The run report: figures and a self-contained ``report.html``, from the run store."""

from .html import write_report

__all__ = ["write_report"]
