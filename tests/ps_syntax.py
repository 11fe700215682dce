"""PowerShell syntax checks with a real parser that runs here: tree-sitter and the
tree-sitter-powershell grammar (both from PyPI, in the `test` extra). No PowerShell runs on this
machine, so this is what stands between a typo in scripts/windows/*.ps1 and the VM.

    problems = syntax_errors(text)      # [] when the grammar accepts the whole script
    tree = parse(text)                  # the tree-sitter tree, to look for a param_block, say

Each problem names the line and column (1-based) and the text the parser could not place.
The grammar is not PowerShell's own parser: it misses a few errors PowerShell reports (a `try`
with neither `catch` nor `finally`, a stray `else` or `catch`, semantic checks such as duplicate
parameters).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import tree_sitter_powershell
from tree_sitter import Language, Node, Parser, Tree


@cache
def _parser() -> Parser:
    return Parser(Language(tree_sitter_powershell.language()))


def parse(text: str) -> Tree:
    return _parser().parse(text.encode("utf-8"))


def syntax_errors(text: str) -> list[str]:
    """`line:column: what` for each ERROR or MISSING node, in order."""
    problems: list[str] = []

    def walk(node: Node) -> None:
        if node.is_error or node.is_missing:
            row, col = node.start_point
            snippet = (node.text or b"").decode("utf-8", "replace").split("\n")[0][:40]
            what = f"missing {node.type}" if node.is_missing else f"cannot parse {snippet!r}"
            problems.append(f"{row + 1}:{col + 1}: {what}")
            return
        for child in node.children:
            if child.has_error or child.is_missing:
                walk(child)

    walk(parse(text).root_node)
    return problems


def node_types(text: str) -> set[str]:
    """Every node type in the script's tree (e.g. `param_block`, `function_statement`)."""
    seen: set[str] = set()
    stack: list[Any] = [parse(text).root_node]
    while stack:
        node = stack.pop()
        seen.add(node.type)
        stack.extend(node.children)
    return seen
