"""`make lint` (hack/typecheck.sh) really checks types across the operator's modules.

mypy once reported success while it could not resolve any `rayop` import (setup.cfg maps the packages onto
controller/ and api/), so every cross-module type was Any. These tests run the same script on a probe file that
calls `rayop.build.build_children` with a wrongly typed argument: the run must fail with mypy's own message for that
call, and the same probe with a right argument must pass. Pointed away from the real packages (for example the old
invocation: `RAYOP_TYPECHECK_SRC="controller api" RAYOP_TYPECHECK_PATH= pytest tests/unit/test_typecheck.py`), both
fail: mypy then reports missing imports instead of the type error.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "hack" / "typecheck.sh"

PROBE = '''
from collections.abc import Mapping
from typing import Any

from rayop.api.model import ClusterModel
from rayop.build import build_children
from rayop.defaults import Options


def probe(ray: Mapping[str, Any], model: ClusterModel, options: Options) -> None:
    build_children(ray, model, options, programs={programs})
'''

pytestmark = pytest.mark.skipif(not (REPO / ".venv" / "bin" / "mypy").exists(), reason="needs make venv")


def typecheck(tmp_path: Path, programs: str) -> subprocess.CompletedProcess[str]:
    probe = tmp_path / "typecheck_probe.py"
    probe.write_text(PROBE.format(programs=programs))
    return subprocess.run(["bash", str(SCRIPT), str(probe)], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ), timeout=600)


def test_cross_module_type_error_fails_the_run(tmp_path: Path) -> None:
    out = typecheck(tmp_path, "12345")
    assert out.returncode != 0, out.stdout + out.stderr
    assert 'Argument "programs" to "build_children" has incompatible type "int"; expected "Mapping[str, str]"' \
        in out.stdout, out.stdout + out.stderr


def test_the_same_call_well_typed_passes(tmp_path: Path) -> None:
    out = typecheck(tmp_path, '{"rayop_launcher.py": "print()"}')
    assert out.returncode == 0, out.stdout + out.stderr
