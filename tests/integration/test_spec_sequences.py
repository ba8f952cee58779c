"""Spec-sequence testing (Acto, SOSP'23) of a live operator (sim mode) on the real API server.

A hypothesis state machine draws a valid `Ray` spec (tests/support/specseq.py: the structured form with the single
`worker` group or with `workerGroups`, or the `configuration` form in the legacy or the node-types layout), creates
one live `Ray` with it, then changes the spec step by step: scale a group, change its bounds, set or clear
`desiredWorkers`, change a pod template (labels, env, CPU, image) of the head or a group, `spec.image`, autoscaling
on and off (`autoScalingMode`, idle timeout), `rollingUpdate`, ray start params, switch form (structured <->
configuration, single group <-> worker groups), add and remove worker groups, or re-apply an earlier spec of the
sequence. After each step it waits until the `Ray` has settled (observedGeneration caught up, Ready, launched, no
pod terminating, nothing changing for a quiet period) and checks:

1. the normalized state equals the state a fresh `Ray` created with the same spec converges to (fresh `Ray`s run
   in a namespace of their own; their states are cached by the spec's canonical JSON);
2. after re-applying an earlier spec, the state equals the one recorded when that spec was applied before;
3. at every pod event during the step: never two head pods, never more pods in a group than the larger of its
   count before the step and its desired count, plus maxSurge; after settling, no pod of a group that no longer
   exists.

The one exclusion (explained in tests/support/specseq.py, `differences`): a group the autoscaler owns may keep more
pods than desired (up to maxWorkers) after its count was lowered; the operator leaves that to the autoscaler by
design, and sim mode runs none.

RAYOP_SEQ_EXAMPLES sequences (default 12) of at most RAYOP_SEQ_STEPS steps (default 4), from a fixed seed;
RAYOP_SEQ_RANDOM=1 draws at random (`make soak`), RAYOP_SEQ_SHRINK=1 shrinks a failing sequence (slow: every
shrink step runs the cluster again). A failing run prints the sequence of specs it applied.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, Phase, note, settings
from hypothesis.control import currently_in_test_context
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule, run_state_machine_as_test

from rayop.api.model import ConfigurationError
from rayop.runtime.kube import ApiError, KubeClient
from tests.support.cluster import LocalCluster, delete_namespace, wait_until
from tests.support.operator import OperatorProcess, rays_path
from tests.support.specseq import (
    CPUS,
    ENV_NAMES,
    ENV_VALUES,
    FORMS,
    GROUP_NAMES,
    IMAGES,
    LABEL_KEYS,
    LABEL_VALUES,
    MAX_COUNT,
    MODES,
    STRUCTURED,
    PodWatch,
    SpecModel,
    canonical,
    differences,
    empty_pod,
    model_of,
    normalized_state,
    render,
    replace_spec,
    scaling_of,
    wait_settled,
)

EXAMPLES = int(os.environ.get("RAYOP_SEQ_EXAMPLES", "12"))
STEPS = int(os.environ.get("RAYOP_SEQ_STEPS", "4"))
RANDOM = os.environ.get("RAYOP_SEQ_RANDOM") == "1"
SHRINK = os.environ.get("RAYOP_SEQ_SHRINK") == "1"
VERBOSE = os.environ.get("RAYOP_SEQ_VERBOSE") == "1"  # print every step as it is applied (with -s)


def _note(text: str) -> None:
    """hypothesis' note (printed with a failing sequence); a print when the steps are called by hand, as in the
    reproducer hypothesis prints."""
    if currently_in_test_context():
        note(text)
    else:
        print(text)


# -- strategies -------------------------------------------------------------------------------------------------


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    pod = empty_pod()
    pod["labels"] = draw(st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=2))
    pod["env"] = draw(st.dictionaries(st.sampled_from(ENV_NAMES), st.sampled_from(ENV_VALUES), max_size=2))
    pod["cpu"] = draw(st.sampled_from(CPUS))
    pod["image"] = draw(st.sampled_from((None, *IMAGES)))
    return pod


@st.composite
def groups(draw: st.DrawFn, name: str) -> dict[str, Any]:
    lo = draw(st.integers(0, 2))
    hi = draw(st.integers(lo, MAX_COUNT))
    return {"name": name, "min": lo, "max": hi, "initial": draw(st.integers(lo, hi)), "pod": draw(pods()),
            "params": draw(st.sampled_from(({}, {"num-cpus": "1"})))}


@st.composite
def spec_models(draw: st.DrawFn) -> SpecModel:
    form = draw(st.sampled_from(FORMS))
    if form in ("single", "legacy"):
        names = ["worker"]
    else:
        names = draw(st.lists(st.sampled_from(GROUP_NAMES), min_size=0, max_size=2, unique=True))
    m = SpecModel(form=form, head=draw(pods()), groups=[draw(groups(n)) for n in names],
                  mode=draw(st.sampled_from(MODES)), idle=draw(st.sampled_from((None, 1, 10))),
                  image=draw(st.sampled_from((None, *IMAGES))),
                  rolling=draw(st.sampled_from((None, (1, 0), (2, 0), (0, 1)))),
                  head_params=draw(st.sampled_from(({}, {"num-cpus": "0"}))))
    with_desired: bool = draw(st.booleans())
    if names and with_desired:
        m.desired = {draw(st.sampled_from(names)): draw(st.integers(0, MAX_COUNT + 1))}
    m.normalize()
    return m


# -- the run's shared resources ------------------------------------------------------------------------------------


@dataclass
class Run:
    kube: KubeClient
    namespace: str
    fresh_namespace: str
    watch: PodWatch
    fresh: dict[str, dict[str, Any]] = field(default_factory=dict)  # canonical spec -> normalized state
    sequences: int = 0
    steps: int = 0
    fresh_created: int = 0
    reverts: int = 0
    names: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    forms: dict[str, int] = field(default_factory=dict)
    rules: dict[str, int] = field(default_factory=dict)


class SpecSequences(RuleBasedStateMachine):
    run: ClassVar[Run]

    def __init__(self) -> None:
        super().__init__()
        self.model = SpecModel()
        self.name = ""
        self.history: list[tuple[str, dict[str, Any], dict[str, Any]]] = []  # (canonical spec, spec, state)
        self.models: list[SpecModel] = []  # the model of each step, for a revert to go on editing from there

    # -- applying a step ------------------------------------------------------------------------------------------

    def bounds(self, old: dict[str, Any] | None, spec: dict[str, Any]) -> dict[str, int]:
        r = self.run
        before = r.watch.counts()
        new = scaling_of(spec, self.name, r.namespace)
        previous = scaling_of(old, self.name, r.namespace) if old is not None else {}
        out = {g: before.get(g, 0) for g in before if g != "head"}  # a removed group never grows
        for g, s in new.items():
            surge = max(s.surge, previous[g].surge if g in previous else 0)
            out[g] = max(before.get(g, 0), s.desired) + surge
        return out

    @staticmethod
    def fresh_name(key: str) -> str:
        return "sqfr" + hashlib.sha256(key.encode()).hexdigest()[:8]

    def step(self, what: str, *, revert_to: int | None = None) -> None:
        r = self.run
        self.model.normalize()
        spec = render(self.model)
        try:
            model_of(spec, self.name or "sqlv0000", r.namespace)
        except ConfigurationError as e:  # the generator must only draw valid specs
            raise AssertionError(f"generated an invalid spec: {e.describe()}: {canonical(spec)}") from e
        key = canonical(spec)
        if self.history and key == self.history[-1][0]:
            _note(f"({what}: the same spec; not applied)")
            return
        n = len(self.history)
        _note(f"step {n} ({what}): {key}")
        r.rules[what.split(":")[0]] = r.rules.get(what.split(":")[0], 0) + 1
        old = self.history[-1][1] if self.history else None
        started = time.monotonic()
        if not self.name:
            self.name = f"sqlv{next(r.names):04d}"
            r.watch.expect(self.name, self.bounds(None, spec))
            r.kube.create(rays_path(r.namespace), {"apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray",
                                                   "metadata": {"name": self.name}, "spec": spec})
            r.sequences += 1
        else:
            r.watch.expect(self.name, self.bounds(old, spec))
            replace_spec(r.kube, r.namespace, self.name, spec)
        r.steps += 1
        r.forms[self.model.form] = r.forms.get(self.model.form, 0) + 1
        targets = [(r.namespace, self.name)]
        fresh = None
        if key not in r.fresh and n > 0:
            fresh = self.fresh_name(key)
            r.kube.create(rays_path(r.fresh_namespace), {"apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray",
                                                         "metadata": {"name": fresh}, "spec": spec})
            targets.append((r.fresh_namespace, fresh))
            r.fresh_created += 1
        wait_settled(r.kube, targets)
        state = normalized_state(r.kube, r.namespace, self.name)
        if fresh is not None:
            r.fresh[key] = normalized_state(r.kube, r.fresh_namespace, fresh)
            r.kube.delete(rays_path(r.fresh_namespace, fresh))
        elif key not in r.fresh:
            r.fresh[key] = state  # the sequence's first spec: the live Ray was created with it
        _note(f"step {n} settled in {time.monotonic() - started:.1f}s")
        if VERBOSE:
            print(f"[{self.name}] step {n} ({what}) settled in {time.monotonic() - started:.1f}s"
                  f"{' with a fresh Ray' if fresh else ''}: {key}")

        # Invariants: the watch has seen the settled pods; nothing broke the bounds meanwhile.
        counts = {g: v["count"] for g, v in state["pods"].items()}
        wait_until(lambda: r.watch.sees(counts), 20, 0.2, message=f"the pod watch to see {counts}")
        assert not r.watch.violations, f"invariants broken during step {n} ({what}): {r.watch.violations[:5]}"
        wanted_groups = {"head", *scaling_of(spec, self.name, r.namespace)}
        lingering = set(state["pods"]) - wanted_groups
        assert not lingering, f"pods of groups that no longer exist after settling: {sorted(lingering)}"
        assert counts.get("head") == 1, f"head pods after settling: {counts.get('head')}"

        # The revert oracle: an earlier spec brings back the state recorded then.
        if revert_to is not None:
            r.reverts += 1
            diffs = differences(state, self.history[revert_to][2])
            assert not diffs, (f"re-applying the spec of step {revert_to} did not bring back its state:\n  "
                               + "\n  ".join(diffs))
        # The fresh-cluster oracle: the same state as a fresh Ray created with this spec.
        diffs = differences(state, r.fresh[key])
        assert not diffs, "the state differs from a fresh Ray's with the same spec:\n  " + "\n  ".join(diffs)
        self.history.append((key, spec, state))
        self.models.append(self.model.copy())

    def teardown(self) -> None:
        if self.name:
            try:
                self.run.kube.delete(rays_path(self.run.namespace, self.name))
            except ApiError as e:
                if not e.not_found:
                    raise

    # -- rules ----------------------------------------------------------------------------------------------------

    @initialize(model=spec_models())
    def create(self, model: SpecModel) -> None:
        self.model = model
        self.step(f"create: {model.form}")

    @precondition(lambda self: self.model.groups and self.model.form != "nodetypes")
    @rule(which=st.integers(0, 3), initial=st.integers(0, MAX_COUNT))
    def scale(self, which: int, initial: int) -> None:
        g = self.model.groups[which % len(self.model.groups)]
        g["initial"] = initial
        self.step(f"scale: {g['name']} initial {initial}")

    @precondition(lambda self: self.model.groups)
    @rule(which=st.integers(0, 3), lo=st.integers(0, 2), hi=st.integers(0, MAX_COUNT))
    def bounds_change(self, which: int, lo: int, hi: int) -> None:
        g = self.model.groups[which % len(self.model.groups)]
        g["min"], g["max"] = min(lo, hi), max(lo, hi)
        self.step(f"bounds: {g['name']} [{g['min']}, {g['max']}]")

    @rule(which=st.integers(0, 3), value=st.one_of(st.none(), st.integers(0, MAX_COUNT + 1)))
    def desired(self, which: int, value: int | None) -> None:
        names = self.model.group_names() + ["gone"]  # an entry for no group is reported and ignored
        name = names[which % len(names)]
        if value is None:
            self.model.desired.pop(name, None)
        else:
            self.model.desired[name] = value
        self.step(f"desiredWorkers: {name} = {value}")

    @rule(place=st.integers(0, 3), kind=st.sampled_from(("labels", "env", "cpu", "image")),
          key=st.integers(0, 1), value=st.integers(0, 2))
    def pod_change(self, place: int, kind: str, key: int, value: int) -> None:
        places = [self.model.head] + [g["pod"] for g in self.model.groups]
        pod = places[place % len(places)]
        where = "head" if place % len(places) == 0 else self.model.groups[place % len(places) - 1]["name"]
        if kind in ("labels", "env"):
            name = (LABEL_KEYS if kind == "labels" else ENV_NAMES)[key]
            values = LABEL_VALUES if kind == "labels" else ENV_VALUES
            if value == 2:
                pod[kind].pop(name, None)
            else:
                pod[kind][name] = values[value]
        elif kind == "cpu":
            pod["cpu"] = CPUS[value]
        else:
            pod["image"] = (None, *IMAGES)[value]
        self.step(f"template: {where} {kind}")

    @rule(image=st.sampled_from((None, *IMAGES)))
    def spec_image(self, image: str | None) -> None:
        self.model.image = image
        self.step(f"image: {image}")

    @rule(mode=st.sampled_from(MODES), idle=st.sampled_from((None, 1, 10)))
    def autoscaling(self, mode: str | None, idle: int | None) -> None:
        self.model.mode, self.model.idle = mode, idle
        self.step(f"autoscaling: mode {mode}, idle {idle}")

    @rule(rolling=st.sampled_from((None, (1, 0), (2, 0), (0, 1))))
    def rolling_update(self, rolling: tuple[int, int] | None) -> None:
        self.model.rolling = rolling
        self.step(f"rollingUpdate: {rolling}")

    @precondition(lambda self: self.model.form in STRUCTURED)
    @rule(place=st.integers(0, 3), value=st.sampled_from((None, "0", "1")))
    def params(self, place: int, value: str | None) -> None:
        places = [self.model.head_params] + [g["params"] for g in self.model.groups]
        params = places[place % len(places)]
        if value is None:
            params.pop("num-cpus", None)
        else:
            params["num-cpus"] = value
        self.step(f"params: num-cpus {value}")

    @rule(form=st.sampled_from(FORMS))
    def switch_form(self, form: str) -> None:
        if form == self.model.form:
            return
        if form in ("single", "legacy") and len(self.model.groups) != 1:
            return  # these forms have exactly one group
        self.model.form = form
        self.step(f"form: {form}")

    @precondition(lambda self: self.model.form in ("groups", "nodetypes") and len(self.model.groups) < 2)
    @rule(data=st.data())
    def add_group(self, data: st.DataObject) -> None:
        free = [n for n in GROUP_NAMES if n not in self.model.group_names()]
        group = data.draw(groups(data.draw(st.sampled_from(free), label="name")), label="group")
        self.model.groups.append(group)
        self.step(f"add group: {group['name']}")

    @precondition(lambda self: self.model.form in ("groups", "nodetypes") and self.model.groups)
    @rule(which=st.integers(0, 3))
    def remove_group(self, which: int) -> None:
        g = self.model.groups.pop(which % len(self.model.groups))
        self.step(f"remove group: {g['name']}")

    @precondition(lambda self: len(self.history) >= 2)
    @rule(back=st.integers(1, 8))
    def revert(self, back: int) -> None:
        current = self.history[-1][0]
        earlier = [i for i, (key, _, _) in enumerate(self.history) if key != current]
        if not earlier:
            return
        index = earlier[-1 - (back - 1) % len(earlier)]
        self.model = self.models[index].copy()
        self.step(f"revert: to step {index}", revert_to=index)


@pytest.mark.slow
def test_spec_sequences_converge_like_fresh_rays(cluster: LocalCluster, kube: KubeClient, namespace: str,
                                                 ray_crd: None, tmp_path: Path) -> None:
    fresh_namespace = f"{namespace}-fresh"[:63]
    kube.create("/api/v1/namespaces", {"metadata": {"name": fresh_namespace, "labels": {"rayop.dev/test": "true"}}})
    op = OperatorProcess(cluster, [namespace, fresh_namespace], tmp_path / "operator.log")
    watch = PodWatch(cluster.client(), namespace)
    op.start()
    started = time.monotonic()
    SpecSequences.run = Run(kube=kube, namespace=namespace, fresh_namespace=fresh_namespace, watch=watch)
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if SHRINK else [])
    try:
        run_state_machine_as_test(SpecSequences, settings=settings(
            max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, database=None, derandomize=not RANDOM,
            phases=phases, suppress_health_check=list(HealthCheck), report_multiple_bugs=False))
        assert op.running(), op.log()[-3000:]
    finally:
        r = SpecSequences.run
        print(f"\nspec sequences: {r.sequences} sequences, {r.steps} steps ({r.reverts} reverts), "
              f"{r.fresh_created} fresh Rays, {len(r.fresh)} distinct specs, {time.monotonic() - started:.0f}s; "
              f"steps by form {r.forms}; by rule {r.rules}")
        watch.stop()
        op.stop()
        delete_namespace(kube, fresh_namespace)
    log = op.log()
    assert '"result": "panic"' not in log, [line for line in log.splitlines() if '"panic"' in line][:3]
    assert "Traceback" not in log
