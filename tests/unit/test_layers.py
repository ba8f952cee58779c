"""The import layering contract (docs/architecture.md draws it), lowest layer first:

    api  <-  defaults, objects, launch  <-  builders (autoscaler, build)  <-  plan, status  <-  reconciler  <-  cli

with the runtime a library of its own and the in-pod programs standalone. `rayop.objects` (typed reads, pod
classification, the head choice, the shared names and ports) needs only the API and the defaults, and
`rayop.launch` (a launch's state from its launcher pods, read by the plan and the status alike) only those; the
builders never reach up to the plan, the status or the reconciler; the status never imports the plan (both read
pods through `rayop.objects` and `rayop.launch`, so they agree on which pod is the head and how a launch stands).

Checked by reading every module's imports (ast), so a violation fails here before it shows up as a cycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTS = {"rayop": REPO / "controller", "rayop.api": REPO / "api"}

# Which rayop modules each layer may import (prefix match; a module may always import itself).
API = ("rayop.api",)
RUNTIME = ("rayop.runtime",)
OBJECTS = API + ("rayop.defaults", "rayop.objects", "rayop.launch")
BUILDERS = OBJECTS + ("rayop.autoscaler", "rayop.build")
PURE = BUILDERS + ("rayop.plan", "rayop.status", "rayop.expectations", "rayop.jobplan", "rayop.gcscleanup")
RULES: list[tuple[str, tuple[str, ...]]] = [
    ("rayop.api", API),
    ("rayop.runtime", RUNTIME),
    ("rayop.inpod", ()),
    ("rayop.defaults", ()),
    ("rayop.objects", OBJECTS),
    ("rayop.launch", OBJECTS),
    ("rayop.autoscaler", OBJECTS),
    ("rayop.build", BUILDERS),
    ("rayop.plan", BUILDERS),
    # Never the plan: the status reads pods, roles and the head through rayop.objects, as the plan does.
    ("rayop.status", BUILDERS),
    ("rayop.expectations", ()),
    ("rayop.jobplan", PURE),
    # The clean-up plan of a deleted Ray with GCS fault tolerance: the model and the defaults only.
    ("rayop.gcscleanup", OBJECTS),
    ("rayop.reconciler", PURE + RUNTIME + ("rayop.reconciler",)),
    # Ray's Job Submission REST API: the standard library only.
    ("rayop.jobsubmit", ()),
    ("rayop.jobreconciler", PURE + RUNTIME + ("rayop.reconciler", "rayop.jobsubmit", "rayop.jobreconciler")),
    ("rayop.render", PURE + ("rayop.render",)),
    # The per-cluster Prometheus series: read from the manager's caches, beside the reconcilers.
    ("rayop.clustermetrics", PURE + RUNTIME + ("rayop.reconciler", "rayop.jobreconciler", "rayop.clustermetrics")),
    ("rayop.cli", PURE + RUNTIME + ("rayop.reconciler", "rayop.jobreconciler", "rayop.jobsubmit", "rayop.render",
                   "rayop.clustermetrics", "rayop.cli")),
    # The kubectl plugin: a client of the API server (runtime's KubeClient) building manifests from the API.
    ("rayop.kubectl_ray", PURE + RUNTIME),
    ("rayop", PURE),  # every other module is pure: no client, no runtime
]
# The modules that build manifests and configs: none of them may reach the plan, the status, the reconcilers,
# the runtime or the command line.
BUILDER_MODULES = ("rayop.build", "rayop.defaults", "rayop.autoscaler", "rayop.objects")
ABOVE_BUILDERS = ("rayop.plan", "rayop.status", "rayop.reconciler", "rayop.jobreconciler", "rayop.runtime",
                  "rayop.cli", "rayop.render")


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


def _module(name: str) -> tuple[str, Path]:
    return next((m, p) for m, p in modules() if m == name)


def test_status_does_not_import_the_plan() -> None:
    assert not any(permitted(n, ("rayop.plan",)) for n in imports_of(*_module("rayop.status")))


def test_builders_do_not_import_the_reconciler_or_anything_above_them() -> None:
    for name in BUILDER_MODULES:
        bad = sorted(n for n in imports_of(*_module(name)) if permitted(n, ABOVE_BUILDERS))
        assert not bad, f"{name} imports {bad}"


def test_every_module_of_the_pure_layers_has_a_rule_of_its_own() -> None:
    """New pure modules must be placed in a layer on purpose, not fall through to the catch-all."""
    named = {prefix for prefix, _ in RULES}
    for module, _ in modules():
        if module.count(".") == 1 and not module.startswith(("rayop.api", "rayop.runtime", "rayop.inpod")):
            assert module in named, f"{module} has no layer in RULES"


def test_the_architecture_page_draws_every_layer() -> None:
    """docs/architecture.md's diagram names every module that has a rule here, so the page stays true."""
    page = (REPO / "docs" / "architecture.md").read_text()
    # Each layer's line names its modules (comma-separated), then its description after a wide gap.
    lines = page.split("```")[1].splitlines()
    names = {n.strip() for line in lines for n in re.split(r"\s{3,}", line.strip())[0].split(",")}
    for prefix, _ in RULES:
        # The runtime and the in-pod programs stand beside the layers; the text below the diagram names them.
        if prefix in ("rayop", "rayop.runtime", "rayop.inpod", "rayop.jobsubmit", "rayop.jobplan"):
            continue
        assert prefix.removeprefix("rayop.") in names, f"{prefix} is missing from docs/architecture.md's layers"
