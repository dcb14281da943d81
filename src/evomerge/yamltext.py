"""YAML read with a bound on what its aliases expand to.

``yaml.safe_load`` shares one object among an anchor's aliases, so a "billion laughs"
config loads in microseconds; but the config is then validated, copied and serialised
as a tree, and every alias becomes a copy: nine nested levels of nine aliases grow to
gigabytes. Anchors and aliases stay usable (a recipe's shared parameters); the tree they
expand to is counted on the composed nodes (each shared node counted once per use,
memoised, so the count itself is instant) and refused above ``MAX_NODES``.
"""

from __future__ import annotations

from typing import Any

import yaml

#: Far above any real config (the largest example has a few hundred nodes).
MAX_NODES = 100_000


class YamlExpansionError(yaml.YAMLError):
    """A document whose aliases expand beyond ``MAX_NODES`` (callers report YAML errors already)."""


class _BoundedLoader(yaml.SafeLoader):
    def construct_document(self, node: yaml.Node) -> Any:
        size = _expanded_size(node, {})
        if size > MAX_NODES:
            raise YamlExpansionError(
                f"its anchors and aliases (&name / *name) expand to over {MAX_NODES:,} values "
                f"({size:,}); write the values out, or use fewer nested aliases"
            )
        return super().construct_document(node)


def _expanded_size(node: yaml.Node, seen: dict[int, int]) -> int:
    """Nodes in the tree ``node`` expands to, aliases as copies; each node computed once."""
    if id(node) in seen:
        return seen[id(node)]
    seen[id(node)] = 1  # a recursive alias counts once, not forever
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, seen) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, seen) + _expanded_size(v, seen) for k, v in node.value)
    else:
        size = 1
    seen[id(node)] = size
    return size


def load_yaml(text: str) -> Any:
    """``yaml.safe_load``, refusing a document whose aliases expand beyond ``MAX_NODES``."""
    return yaml.load(text, Loader=_BoundedLoader)
