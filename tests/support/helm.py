"""Helm for the tests: the binary hack/build-helm.sh builds (or finds in its cache), the chart, and renders of it.

`helm_binary()` builds Helm on the first call of a process when the cache is cold (a few minutes; `make test` builds
it before pytest starts) and is instant after. `template()` renders the chart as `helm template` does and returns
the objects, `render_manifests()` the plain manifests as hack/render-manifests.sh would write them.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support.cluster import REPO

CHART = REPO / "manifests" / "chart" / "rayop"
BUILD = REPO / "hack" / "build-helm.sh"
RENDER = REPO / "hack" / "render-manifests.sh"
RELEASE = "rayop"
NAMESPACE = "rayop-system"


@functools.cache
def helm_binary() -> str:
    out = subprocess.run([str(BUILD)], check=True, capture_output=True, text=True, timeout=1800)
    path = out.stdout.strip().splitlines()[-1]
    assert Path(path).is_file(), out
    return path


def helm(*args: str, check: bool = True, env: dict[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([helm_binary(), *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


def set_args(values: dict[str, str]) -> list[str]:
    return [a for key, value in values.items() for a in ("--set", f"{key}={value}")]


def template(values: dict[str, str] | None = None, *extra: str, chart: Path = CHART) -> list[dict[str, Any]]:
    """The objects `helm template rayop CHART -n rayop-system` renders with these `--set` values."""
    out = helm("template", RELEASE, str(chart), "--namespace", NAMESPACE, *set_args(values or {}), *extra)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def render_manifests() -> dict[str, str]:
    """What hack/render-manifests.sh would write, by path relative to the repository."""
    helm_binary()  # the script builds Helm when the cache is cold: do that under the build's own time limit
    out = subprocess.run([str(RENDER), "--stdout"], check=True, capture_output=True, text=True, timeout=300)
    files: dict[str, str] = {}
    path = None
    for line in out.stdout.splitlines(keepends=True):
        if line.startswith("==> "):
            path = line[4:].strip()
            files[path] = ""
        elif path is not None:
            files[path] += line
    return files
