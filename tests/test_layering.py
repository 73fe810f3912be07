"""The package's layers, enforced: each failure names the offending import (file, line, module).

types.py, config/schema.py      leaves: import nothing of grpo_lightning
algo/                           pure torch: neither Lightning nor transformers, even indirectly
run/                            imported by nothing but itself and the entry point
everything                      no import cycles
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "grpo_lightning"
ENTRY_POINTS = {"grpo_lightning.train"}  # the old `python -m grpo_lightning.train` path
HEAVY = ("lightning", "pytorch_lightning", "transformers", "peft")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, top_level_only: bool = False) -> list[tuple[int, str]]:
    """(line, imported module) for each import in module ``name`` (see :func:`imports_in`)."""
    return imports_in(MODULES[name].read_text(), top_level_only)


def imports_in(source: str, top_level_only: bool = False) -> list[tuple[int, str]]:
    """(line, imported module) for each import in ``source``; ``from a import b`` gives ``a.b`` when
    that is a module of ours, else ``a``. Imports under ``if TYPE_CHECKING:`` are left out."""
    tree = ast.parse(source)
    found = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            if isinstance(child, ast.Import):
                found.extend((child.lineno, alias.name) for alias in child.names if top or not top_level_only)
            elif isinstance(child, ast.ImportFrom) and child.module and (top or not top_level_only):
                for alias in child.names:
                    submodule = f"{child.module}.{alias.name}"
                    found.append((child.lineno, submodule if submodule in MODULES else child.module))
            visit(child, inner)

    visit(tree, True)
    return found


def offending(names, rule) -> list[str]:
    found = [(n, line, target) for n in names for line, target in imports(n) if rule(target)]
    return [f"{MODULES[n].relative_to(PACKAGE.parent)}:{line} imports {target}" for n, line, target in found]


def is_ours(target: str) -> bool:
    return target.startswith("grpo_lightning")


def is_heavy(target: str) -> bool:
    return target.split(".")[0] in HEAVY


def test_leaf_modules_import_nothing_of_the_package():
    leaves = ["grpo_lightning.types", "grpo_lightning.config.schema"]
    assert offending(leaves, is_ours) == []


def test_algo_imports_neither_lightning_nor_transformers():
    algo = [name for name in MODULES if name.startswith("grpo_lightning.algo")]
    assert algo, "no algo modules found"
    assert offending(algo, is_heavy) == []
    # ... nor through what it imports: load each in a fresh interpreter and look.
    probe = "import sys, importlib\n" + "".join(f"importlib.import_module({n!r})\n" for n in algo)
    probe += f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", f"importing grpo_lightning.algo loads {loaded.strip()[:300]}"


def test_nothing_imports_run_but_the_entry_point():
    outside = [name for name in MODULES if not name.startswith("grpo_lightning.run") and name not in ENTRY_POINTS]
    assert offending(outside, lambda target: target.startswith("grpo_lightning.run")) == []


def test_no_import_cycles():
    graph = {name: {t for _, t in imports(name, top_level_only=True) if t in MODULES} for name in MODULES}
    cycles, state = [], {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


@pytest.mark.parametrize(
    "rule, source, expected",
    [
        (is_ours, "import torch\nfrom grpo_lightning.algo.kl import kl_k3\n", [(2, "grpo_lightning.algo.kl")]),
        (is_heavy, "import torch\n\n\ndef f():\n    import lightning\n", [(5, "lightning")]),
        (is_heavy, "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import transformers\n", []),
    ],
)
def test_the_checks_see_imports_anywhere_in_a_file(rule, source, expected):
    """A check that could not fail would prove nothing: planted imports are found, with their lines,
    inside functions too; only type-checking imports are exempt."""
    assert [(line, target) for line, target in imports_in(source) if rule(target)] == expected


def test_the_cycle_check_sees_a_cycle(monkeypatch):
    planted = {"grpo_lightning.types": "import grpo_lightning.module\n"}
    monkeypatch.setattr(
        sys.modules[__name__],
        "imports",
        lambda name, top_level_only=False: imports_in(planted.get(name, MODULES[name].read_text()), top_level_only),
    )
    with pytest.raises(AssertionError, match="grpo_lightning.types -> grpo_lightning.module"):
        test_no_import_cycles()
