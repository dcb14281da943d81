"""The demo model family: a tiny base and specialists in which merging measurably helps."""

from .family import BUILDER_VERSION, build_demo_family, default_family_dir, is_built, load_member, read_manifest
from .showcase import Row, score_family

__all__ = [
    "BUILDER_VERSION",
    "Row",
    "build_demo_family",
    "default_family_dir",
    "is_built",
    "load_member",
    "read_manifest",
    "score_family",
]
