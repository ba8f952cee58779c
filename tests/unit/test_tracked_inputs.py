"""Every file the Makefile and the hack/ scripts read is in git and not hidden by .gitignore.

A `.gitignore` pattern once hid the control-plane build's wrapper modules (`build/` matched `hack/build/`): the
files never reached git, and CI stayed green only because the binaries were cached on its machine. These tests read
the Makefile and the scripts under hack/ for the paths they use, add the build script's declared inputs and every
file under hack/, and require each to exist, to be tracked, and not to be matched by an ignore pattern. Generated
paths (the venv, caches, build/ outputs) and paths made of variables are left out.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HACK = REPO / "hack"
GENERATED = (".venv", ".mypy_cache", ".pytest_cache", ".hypothesis", "build", "dist")

# "$here/x" and "$repo/x" in shell scripts (here = the script's folder, hack/ or below; repo = the top).
SHELL_REF = re.compile(r'\$\{?(here|repo)\}?/([A-Za-z0-9_./-]+)')
# HACK / "x" / "y" and REPO / "x" in Python scripts.
PY_REF = re.compile(r'\b(HACK|REPO)((?:\s*/\s*"[A-Za-z0-9_.-]+")+)')
# Paths in the Makefile: anything under these top-level folders, or these top-level files.
MAKE_REF = re.compile(r'(?<![\w./-])((?:hack|bench|manifests|tests|controller|api|\.ci)/[A-Za-z0-9_./-]*[A-Za-z0-9_]'
                      r'|setup\.cfg|pyproject\.toml|README\.md|Dockerfile)(?![\w/-])')


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def tracked() -> set[str]:
    out = git("ls-files", "-z")
    if out.returncode != 0:
        pytest.fail(f"not a git checkout: {out.stderr.strip()}")
    return {p for p in out.stdout.split("\0") if p}


def build_inputs() -> list[str]:
    """The inputs hack/build-control-plane.sh declares (its `inputs=(...)` array), relative to the top."""
    text = (HACK / "build-control-plane.sh").read_text()
    match = re.search(r"^inputs=\(([^)]*)\)", text, re.M)
    assert match, "hack/build-control-plane.sh declares no inputs=(...)"
    return [f"hack/{name}" for name in match.group(1).split()]


def referenced_paths() -> dict[str, str]:
    """Path (relative to the top) -> the file that reads it."""
    refs: dict[str, str] = {}
    for script in sorted(HACK.rglob("*")):
        if not script.is_file() or "__pycache__" in script.parts:
            continue
        text = script.read_text(errors="replace")
        where = str(script.relative_to(REPO))
        if script.suffix == ".sh":
            here = script.parent
            for base, rel in SHELL_REF.findall(text):
                root = REPO if base == "repo" else here
                refs.setdefault(str((root / rel).resolve().relative_to(REPO)), where)
        elif script.suffix == ".py":
            for base, segments in PY_REF.findall(text):
                root = REPO if base == "REPO" else HACK
                parts = re.findall(r'"([^"]+)"', segments)
                refs.setdefault(str(root.joinpath(*parts).relative_to(REPO)), where)
    for match in MAKE_REF.findall((REPO / "Makefile").read_text()):
        refs.setdefault(match.rstrip("/."), "Makefile")
    for name in build_inputs():
        refs[name] = "hack/build-control-plane.sh (inputs)"
    for path in HACK.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            refs.setdefault(str(path.relative_to(REPO)), "hack/ (every file there is part of the tools)")
    return {p: w for p, w in refs.items() if p.split("/")[0] not in GENERATED and "$" not in p}


def test_the_scan_finds_the_build_inputs() -> None:
    refs = referenced_paths()
    for name in ("hack/build/k8s/go.mod", "hack/build/etcd/go.mod", "hack/build/etcd/main.go", "hack/versions.env",
                 "hack/local-cluster.sh", "hack/cluster/localcluster.py", "hack/nodeagent/main.py", "setup.cfg",
                 "manifests/crd.yaml"):
        assert name in refs, f"the scan misses {name}"


def test_every_file_the_tools_read_is_tracked_and_not_ignored(tracked: set[str]) -> None:
    problems = []
    for path, reader in sorted(referenced_paths().items()):
        full = REPO / path
        if git("check-ignore", "--no-index", "-q", path).returncode == 0:
            problems.append(f"{path} (read by {reader}) is matched by a .gitignore pattern")
        if full.is_dir():
            if not any(t.startswith(path + "/") for t in tracked):
                problems.append(f"{path}/ (read by {reader}) has no tracked file")
        elif not full.exists():
            problems.append(f"{path} (read by {reader}) does not exist")
        elif path not in tracked:
            problems.append(f"{path} (read by {reader}) is not tracked by git")
    assert not problems, "\n".join(problems)


def test_no_tracked_file_is_matched_by_an_ignore_pattern() -> None:
    # A tracked file that an ignore pattern matches means the pattern hides its untracked siblings.
    out = git("ls-files", "--cached", "--ignored", "--exclude-standard")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [], f"tracked but ignored: {out.stdout.split()}"
