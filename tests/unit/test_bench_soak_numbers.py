"""The numbers the long runs report: the soak's fit of the operator's RSS against the pods that exist
(bench/soak.py `fit_rss`) and the parallel spec-sequence run's reading of each process's summary line
(bench/spec_sequences.py `parse_summary`)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))  # bench/soak.py imports its siblings so

from bench.spec_sequences import parse_summary  # noqa: E402
from soak import fit_rss  # noqa: E402


def samples(per_pod: float, per_hour: float, noise: float = 0.05, n: int = 400) -> list[tuple[float, float, int]]:
    rng = random.Random(7)
    out = []
    pods = 800
    for i in range(n):
        pods = max(0, pods + rng.randint(-20, 22))  # a churning cluster that grows a little
        t = 1000.0 + 5 * i
        out.append((t, 70 + per_pod * pods + per_hour * (t - 1000.0) / 3600 + rng.gauss(0, noise), pods))
    return out


def test_growth_that_follows_the_pods_is_not_counted_as_growth_over_time() -> None:
    fit = fit_rss(samples(per_pod=0.02, per_hour=0.0))
    assert fit is not None
    assert fit["mib_per_pod"] == pytest.approx(0.02, abs=0.001)
    assert abs(fit["mib_per_hour_beyond_pods"]) < 0.5


def test_growth_over_time_beyond_the_pods_is_reported() -> None:
    fit = fit_rss(samples(per_pod=0.02, per_hour=12.0))
    assert fit is not None
    assert fit["mib_per_hour_beyond_pods"] == pytest.approx(12.0, abs=0.5)
    assert fit["mib_per_pod"] == pytest.approx(0.02, abs=0.001)


def test_no_fit_when_the_pod_count_never_changes() -> None:
    assert fit_rss([(float(t), 80.0 + t / 100, 500) for t in range(50)]) is None
    assert fit_rss([(1.0, 80.0, 500)] * 3) is None


def test_the_summary_line_of_a_spec_sequence_run_is_read() -> None:
    text = ("....\nspec sequences: 91 sequences, 355 steps (36 reverts), 147 fresh Rays, 198 distinct specs, 1684s; "
            "steps by form {'single': 3}; by rule {'create': 91}\nPASSED\n")
    assert parse_summary(text) == {"sequences": 91, "steps": 355, "reverts": 36, "fresh": 147, "distinct": 198,
                                   "seconds": 1684}
    assert parse_summary("collected 1 item\nERROR at setup") is None
