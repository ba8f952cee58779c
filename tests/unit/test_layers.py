"""The import layering contract: api <- pure builders/plan/status <- reconciler <- cli, with the runtime a
library of its own and the in-pod programs standalone.

Checked by reading every module's imports (ast), so a violation fails here before it shows up as a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTS = {"rayop": REPO / "controller", "rayop.api": REPO / "api"}

# Which rayop modules each layer may import (prefix match). Modules not listed belong to the "pure" layer.
API = ("rayop.api",)
RUNTIME = ("rayop.runtime",)
PURE = API + ("rayop.build", "rayop.plan", "rayop.status", "rayop.defaults", "rayop.autoscaler",
              "rayop.expectations", "rayop.jobplan")
RULES: list[tuple[str, tuple[str, ...]]] = [
    ("rayop.api", API),
    ("rayop.runtime", RUNTIME),
    ("rayop.inpod", ()),
    ("rayop.reconciler", PURE + RUNTIME + ("rayop.reconciler",)),
    # Ray's Job Submission REST API: the standard library only.
    ("rayop.jobsubmit", ()),
    ("rayop.jobreconciler", PURE + RUNTIME + ("rayop.reconciler", "rayop.jobsubmit", "rayop.jobreconciler")),
    ("rayop.render", PURE + ("rayop.render",)),
    ("rayop.cli", PURE + RUNTIME + ("rayop.reconciler", "rayop.jobreconciler", "rayop.jobsubmit", "rayop.render",
                   "rayop.cli")),
    ("rayop", PURE),  # every other module is pure: no client, no runtime
]


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted((REPO / "api").rglob("*.py")):
        rel = path.relative_to(REPO / "api").with_suffix("")
        out.append((".".join(("rayop", "api", *rel.parts)).removesuffix(".__init__"), path))
    for path in sorted((REPO / "controller").rglob("*.py")):
        rel = path.relative_to(REPO / "controller").with_suffix("")
        out.append((".".join(("rayop", *rel.parts)).removesuffix(".__init__"), path))
    return out


def imports_of(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
    return {name for name in found if name == "rayop" or name.startswith("rayop.")}


def allowed_for(module: str) -> tuple[str, ...]:
    for prefix, allowed in RULES:
        if module == prefix or module.startswith(prefix + "."):
            return allowed
    raise AssertionError(module)


def permitted(name: str, allowed: tuple[str, ...]) -> bool:
    return any(name == a or name.startswith(a + ".") for a in allowed)


@pytest.mark.parametrize(("module", "path"), modules(), ids=[m for m, _ in modules()])
def test_module_respects_layers(module: str, path: Path) -> None:
    allowed = allowed_for(module) + (module,)
    bad = sorted(name for name in imports_of(module, path) if not permitted(name, allowed))
    assert not bad, f"{module} imports {bad}; its layer allows {allowed}"


def test_pure_modules_do_not_import_the_client() -> None:
    for module, path in modules():
        if allowed_for(module) in (PURE, API, ()):
            text = path.read_text()
            assert "import kubernetes" not in text and "from kubernetes" not in text, module
