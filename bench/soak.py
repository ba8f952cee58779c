"""Load-and-churn soak: N static `Ray`s on a sim-mode control plane, scaled, deleted and re-created, their heads
killed, for M minutes, while a pod watch checks the operator's bounds; then everything must settle and go idle.

    .venv/bin/python bench/soak.py --rays 200 --minutes 30 [--json FILE]

It reuses the benchmark's machinery (bench/reconcile_many.py): the local control plane in a state dir of its own
(`--cluster-dir`, default /tmp/rayop-soak; brought up when not up there, down at the end when started here), the CRD,
`rayop run` as a subprocess through bench/rayjob_operator.py (requests counted by verb and resource), list+watch
of pods and `Ray`s, the API server's `apiserver_request_total`.

Phases:

1. Create N `Ray`s round-robin in `--namespaces` fresh namespaces: static (autoScalingMode disabled), a head and
   two worker groups, `small` (min 0, max 4, initially 1) and `large` (min 1, max 6, initially 2): 4 pods each.
   Wait until each is Ready for its generation and runs exactly its desired pods (the baseline: pods per `Ray` by
   role and group).
2. Churn for `--minutes`, one tick every `--interval` seconds (10):
   - scale: `--scale-fraction` of the `Ray`s (10%, at least 1) get one group's `spec.desiredWorkers` set to another
     value within the group's [min, max] (up or down);
   - delete and re-create under the same name: every `--recreate-every` ticks (3), `--recreates` `Ray`s (2) are
     deleted and created again with their first spec, both ways in turn: *waiting* (foreground deletion, the new
     `Ray` created once the old one and so its pods are gone, as `kubectl delete --wait` then `apply` does) and
     *at once* (background deletion, the new one created right away: the old children, with the old owner's UID,
     are still there while the new `Ray` starts, its ConfigMap and Service names collide until the garbage
     collector is done). Re-creations run on their own threads so the ticks keep their pace;
   - head kills: `--head-kills` `Ray`s (1) per tick have their head pod deleted (a crashed head's pod replaced).
3. Checked throughout, from the pod watch (pods of role head or worker, keyed by their controller owner's UID, so
   an old and a new `Ray` of one name are two owners):
   - **live** pods are those neither terminating (deletionTimestamp) nor finished (Succeeded/Failed);
   - **worker bound**: at every pod event, and every second, for every owner and group,
     `live <= max(desired over [t - L, t]) + surge`, where desired(t) is the count the soak asked for (a change is
     counted from the moment its PATCH was sent; the old count stays allowed until L seconds after the PATCH
     returned), L = `--lag-seconds` (30): the operator's time to see a change and have its deletions seen, and
     surge = `--surge` (1: the documented maxSurge default; a scale never uses it, a rolling update would). The
     time a group spends above its current desired count is reported (the scale-downs' deletions);
   - **heads**: never two live heads of one owner, and never two head pods of one owner that are not finished at
     all, terminating ones included (the operator creates a head only once the old one is gone); no lag allowed;
   - no pod is created for an owner later than L seconds after its deletion was asked for;
   - the operator never exits (its exit is a failure, reported with its code);
   - its RSS (VmRSS) is sampled every `--rss-every` seconds (5); reported: first, last, peak and the slope of a
     least-squares line over the churn's samples, in MiB/hour.
4. After the churn: every `Ray` (the re-created ones too) Ready for its generation with exactly its final desired
   pods, all ready, and one head; no pod of a deleted owner left; no orphan (a pod, ConfigMap, Service or Job in
   the soak's namespaces whose controller owner does not exist), within `--settle-timeout` (600 s).
5. Idle `--idle-seconds` (60): the operator's writes (POST, PUT, PATCH, DELETE of its `rayop_api_requests_total`)
   must be zero.
6. Clean-up: the `Ray`s are deleted with the operator running, then their namespaces, then the operator stopped.

Exit status 1, with every failed check listed, when any check fails. Results go to
/tmp/rayop-bench-results/soak-<run>/results.json (and `--json`), next to the operator's log.

Deliberate faults to see the checks fail: `--surge -1` (the worker bound fails as soon as a group is complete),
`--kill-operator-after SECONDS` (SIGKILL to the operator that many seconds into the churn).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import reconcile_many as rm  # bench/ is on sys.path when this file runs as a script

from rayop.api.types import GROUP, PLURAL, VERSION
from rayop.objects import LABEL_GROUP, LABEL_MANAGED_BY, LABEL_ROLE, MANAGED_BY, ROLE_HEAD, ROLE_WORKER
from rayop.runtime.kube import ApiError, KubeClient

HEAD = "head"
GROUPS = {"small": (0, 4, 1), "large": (1, 6, 2)}  # name -> (minWorkers, maxWorkers, initialWorkers)
PODS_PER_RAY = 1 + sum(g[2] for g in GROUPS.values())
log = rm.log


def ray_object(name: str, namespace: str, run: str) -> dict[str, Any]:
    """The benchmark's static `Ray` (same templates, spread constraint, requests), with two worker groups."""
    ray = rm.ray_object(name, namespace, run)
    spec = ray["spec"]
    worker = spec.pop("worker")
    spec.pop("initialWorkers")
    spec["workerGroups"] = [{"name": g, "minWorkers": lo, "maxWorkers": hi, "initialWorkers": n, "template": worker}
                            for g, (lo, hi, n) in GROUPS.items()]
    return ray


def rays_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    return f"{base}/{name}" if name else base


def owner_uid(obj: dict[str, Any]) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def fit_rss(samples: list[tuple[float, float, int]]) -> dict[str, float] | None:
    """Least squares of RSS = a + b * pods + c * t over (t, rss MiB, pods) samples: b is the RSS that goes with each
    pod in the cluster (the operator caches every pod it manages), c (per hour) the growth the pod count does not
    explain -- what a leak would show. None when the samples cannot tell the two apart (too few, or the pod count
    or the time does not vary)."""
    if len(samples) < 5:
        return None
    t0 = samples[0][0]
    xs = [((t - t0) / 3600, float(n)) for t, _, n in samples]
    ys = [v for _, v, _ in samples]
    k = len(xs)
    mt, mp, my = sum(x[0] for x in xs) / k, sum(x[1] for x in xs) / k, sum(ys) / k
    stt = sum((x[0] - mt) ** 2 for x in xs)
    spp = sum((x[1] - mp) ** 2 for x in xs)
    stp = sum((x[0] - mt) * (x[1] - mp) for x in xs)
    sty = sum((x[0] - mt) * (y - my) for x, y in zip(xs, ys))
    spy = sum((x[1] - mp) * (y - my) for x, y in zip(xs, ys))
    det = stt * spp - stp * stp
    if stt <= 0 or spp <= 0 or det <= 1e-12 * stt * spp:
        return None
    per_hour = (spp * sty - stp * spy) / det
    per_pod = (stt * spy - stp * sty) / det
    return {"mib_per_pod": per_pod, "mib_per_hour_beyond_pods": per_hour,
            "pods_first": samples[0][2], "pods_last": samples[-1][2],
            "pods_min": min(n for _, _, n in samples), "pods_max": max(n for _, _, n in samples)}


def slope_per_hour(samples: list[tuple[float, float]]) -> float | None:
    if len(samples) < 3:
        return None
    xs, ys = [t for t, _ in samples], [v for _, v in samples]
    if max(xs) - min(xs) <= 0:
        return None
    return statistics.linear_regression(xs, ys).slope * 3600


@dataclass
class Owner:
    """One `Ray` object (one UID): what the soak asked of it over time."""

    key: str  # namespace/name
    created_at: float
    # group -> [(sent, returned, count)], in order; `head` is always 1.
    desired: dict[str, list[tuple[float, float, int]]] = field(default_factory=dict)
    deleted_at: float | None = None

    def allowed(self, group: str, now: float, lag: float) -> int:
        changes = self.desired.get(group) or []
        best = 0
        for i, (sent, _, count) in enumerate(changes):
            if sent > now:
                break
            until = changes[i + 1][1] + lag if i + 1 < len(changes) else None
            if until is None or now <= until:
                best = max(best, count)
        return best

    def current(self, group: str) -> int:
        changes = self.desired.get(group) or []
        return changes[-1][2] if changes else 0


class PodBook:
    """The live pods of every owner and group, from the pod watch, with the checks run at each change."""

    def __init__(self, args: argparse.Namespace, namespaces: set[str]):
        self.args = args
        self.namespaces = namespaces
        self.lock = threading.RLock()
        self.owners: dict[str, Owner] = {}  # uid -> Owner
        self.pods: dict[str, tuple[str, str, bool]] = {}  # pod uid -> (owner uid, group, live)
        self.live: Counter[tuple[str, str]] = Counter()  # (owner uid, group) -> live pods
        self.names: dict[str, str] = {}  # pod uid -> namespace/name
        self.violations: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = defaultdict(list)
        self.excess_since: dict[tuple[str, str], float] = {}
        self.excess_seconds: list[float] = []
        self.most_over_current = 0
        self.events = 0
        self.created = 0
        self.unknown_owner_pods: set[str] = set()

    # -- recording -------------------------------------------------------------------------------------------------

    def owner(self, uid: str, key: str, now: float) -> Owner:
        with self.lock:
            if uid not in self.owners:
                self.owners[uid] = Owner(key=key, created_at=now)
            return self.owners[uid]

    def set_desired(self, uid: str, group: str, sent: float, returned: float, count: int) -> None:
        with self.lock:
            self.owners[uid].desired.setdefault(group, []).append((sent, returned, count))

    def _set(self, pod_uid: str, entry: tuple[str, str, bool] | None) -> None:
        old = self.pods.pop(pod_uid, None)
        if old is not None and old[2]:
            self.live[(old[0], old[1])] -= 1
        if entry is not None:
            self.pods[pod_uid] = entry
            if entry[2]:
                self.live[(entry[0], entry[1])] += 1

    def on_list(self, items: list[dict[str, Any]], now: float) -> None:
        uids = {p["metadata"]["uid"] for p in items}
        with self.lock:
            for uid in [u for u in self.pods if u not in uids]:
                self._set(uid, None)

    def on_pod(self, pod: dict[str, Any], now: float) -> None:
        meta = pod["metadata"]
        if meta["namespace"] not in self.namespaces:
            return
        labels = meta.get("labels") or {}
        role = labels.get(LABEL_ROLE)
        if role not in (ROLE_HEAD, ROLE_WORKER):
            return
        owner = owner_uid(pod)
        if owner is None:
            return
        group = HEAD if role == ROLE_HEAD else str(labels.get(LABEL_GROUP))
        finished = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        live = not meta.get("deletionTimestamp") and not finished
        with self.lock:
            self.events += 1
            new = meta["uid"] not in self.pods
            self._set(meta["uid"], (owner, group, live))
            self.names[meta["uid"]] = f"{meta['namespace']}/{meta['name']}"
            if new and live:
                self.created += 1
                o = self.owners.get(owner)
                if o is None:
                    self.unknown_owner_pods.add(meta["uid"])
                elif o.deleted_at is not None and now > o.deleted_at + self.args.lag_seconds:
                    self.fail("created-after-delete", f"pod {self.names[meta['uid']]} created "
                              f"{now - o.deleted_at:.1f} s after its Ray {o.key} ({owner[:8]}) was deleted")
            self.check(owner, group, now)

    def on_deleted(self, pod: dict[str, Any]) -> None:
        with self.lock:
            entry = self.pods.get(pod["metadata"]["uid"])
            self._set(pod["metadata"]["uid"], None)
            if entry is not None:
                self.check(entry[0], entry[1], time.monotonic())

    # -- checks ----------------------------------------------------------------------------------------------------

    def fail(self, kind: str, message: str) -> None:
        self.violations[kind] += 1
        if len(self.examples[kind]) < 10:
            self.examples[kind].append(message)
            log(f"VIOLATION {kind}: {message}")

    def check(self, owner: str, group: str, now: float) -> None:
        with self.lock:
            live = self.live[(owner, group)]
            o = self.owners.get(owner)
            name = o.key if o else owner
            if group == HEAD:
                if live > 1:
                    heads = sorted(self.names[u] for u, (ow, g, alive) in self.pods.items()
                                   if ow == owner and g == HEAD and alive)
                    self.fail("two-live-heads", f"{live} live head pods of {name}: {heads}")
                return
            if o is None:
                return
            allowed = o.allowed(group, now, self.args.lag_seconds) + self.args.surge
            if live > allowed:
                self.fail("above-desired", f"{o.key} ({owner[:8]}) group {group}: {live} live pods > "
                          f"{allowed} (max desired over the last {self.args.lag_seconds:g} s + surge "
                          f"{self.args.surge})")
            key = (owner, group)
            over = live - o.current(group)
            self.most_over_current = max(self.most_over_current, over)
            if over > 0 and o.deleted_at is None:
                self.excess_since.setdefault(key, now)
            elif key in self.excess_since:
                self.excess_seconds.append(now - self.excess_since.pop(key))

    def sweep(self, now: float) -> None:
        """The bound again for every owner and group with live pods: a scale-down not acted on shows here."""
        with self.lock:
            for owner, group in [k for k, n in self.live.items() if n > 0] + list(self.excess_since):
                self.check(owner, group, now)

    def live_of(self, owner: str) -> Counter[str]:
        with self.lock:
            return Counter({g: self.live[(owner, g)] for g in (HEAD, *GROUPS) if self.live[(owner, g)] > 0})


class HeadObjects:
    """Head pods that exist and are not finished (terminating ones included), per owner, from the same watch."""

    def __init__(self, book: PodBook):
        self.book = book
        self.present: dict[str, str] = {}  # pod uid -> owner uid

    def on_list(self, items: list[dict[str, Any]], now: float) -> None:
        uids = {p["metadata"]["uid"] for p in items}
        with self.book.lock:
            for uid in list(self.present):
                if uid not in uids:
                    self.present.pop(uid)

    def on_pod(self, pod: dict[str, Any], now: float) -> None:
        self.book.on_pod(pod, now)
        meta = pod["metadata"]
        if (meta.get("labels") or {}).get(LABEL_ROLE) != ROLE_HEAD or meta["namespace"] not in self.book.namespaces:
            return
        owner = owner_uid(pod)
        if owner is None:
            return
        finished = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        with self.book.lock:
            if finished:
                self.present.pop(meta["uid"], None)
                return
            self.present[meta["uid"]] = owner
            same = sorted(self.book.names.get(u, u) for u, o in self.present.items() if o == owner)
            if len(same) > 1:
                self.book.fail("two-head-pods", f"{len(same)} head pods (terminating ones included) of "
                               f"{owner[:8]}: {same}")

    def on_deleted(self, pod: dict[str, Any]) -> None:
        with self.book.lock:
            self.present.pop(pod["metadata"]["uid"], None)
        self.book.on_deleted(pod)


class RayBook:
    """The `Ray`s as the watch last saw them: uid, generation, Ready for the generation."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objects: dict[str, dict[str, Any]] = {}

    def on_list(self, items: list[dict[str, Any]], now: float) -> None:
        with self.lock:
            self.objects = {}

    def on_ray(self, obj: dict[str, Any], now: float) -> None:
        with self.lock:
            self.objects[rm.key_of(obj)] = obj

    def on_deleted(self, obj: dict[str, Any]) -> None:
        with self.lock:
            current = self.objects.get(rm.key_of(obj))
            if current is not None and current["metadata"]["uid"] == obj["metadata"]["uid"]:
                self.objects.pop(rm.key_of(obj))

    def ready(self, key: str, uid: str) -> bool:
        with self.lock:
            obj = self.objects.get(key)
        if obj is None or obj["metadata"]["uid"] != uid:
            return False
        status = obj.get("status") or {}
        return status.get("observedGeneration") == obj["metadata"].get("generation") and rm.condition_true(obj, "Ready")


class Soak:
    def __init__(self, args: argparse.Namespace, kube: KubeClient, run: str, namespaces: list[str]):
        self.args = args
        self.kube = kube
        self.run = run
        self.namespaces = namespaces
        self.rng = random.Random(args.seed)
        self.book = PodBook(args, set(namespaces))
        self.heads = HeadObjects(self.book)
        self.rays = RayBook()
        self.lock = threading.Lock()
        self.current: dict[str, str] = {}  # namespace/name -> uid of the Ray the soak created last
        self.busy: set[str] = set()  # keys being deleted and re-created
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []
        self.threads: list[threading.Thread] = []

    # -- objects ---------------------------------------------------------------------------------------------------

    def create(self, key: str) -> str:
        ns, name = key.split("/")
        sent = time.monotonic()
        while True:
            try:
                made = self.kube.create(rays_path(ns), ray_object(name, ns, self.run))
                break
            except ApiError as e:
                if not (e.already_exists or e.conflict) or time.monotonic() - sent > 120:
                    raise
                time.sleep(0.2)  # the old object is still being deleted
        returned = time.monotonic()
        uid = str(made["metadata"]["uid"])
        self.book.owner(uid, key, sent)
        self.book.set_desired(uid, HEAD, sent, returned, 1)
        for g, (_, _, n) in GROUPS.items():
            self.book.set_desired(uid, g, sent, returned, n)
        with self.lock:
            self.current[key] = uid
        return uid

    def scale(self, key: str) -> None:
        uid = self.current[key]
        owner = self.book.owners[uid]
        group = self.rng.choice(sorted(GROUPS))
        lo, hi, _ = GROUPS[group]
        now_count = owner.current(group)
        count = self.rng.choice([n for n in range(lo, hi + 1) if n != now_count])
        ns, name = key.split("/")
        sent = time.monotonic()
        self.kube.patch(rays_path(ns, name), {"spec": {"desiredWorkers": {group: count}}}, metadata_only=True)
        self.book.set_desired(uid, group, sent, time.monotonic(), count)
        self.counts["scale_up" if count > now_count else "scale_down"] += 1

    def kill_head(self, key: str) -> None:
        uid = self.current[key]
        ns = key.split("/")[0]
        with self.book.lock:
            heads = [self.book.names[p] for p, (o, g, live) in self.book.pods.items() if o == uid and g == HEAD and live]
        for head in heads:
            try:
                self.kube.delete(f"/api/v1/namespaces/{ns}/pods/{head.split('/')[1]}")
                self.counts["head_kills"] += 1
            except ApiError as e:
                if not e.not_found:
                    raise

    def recreate(self, key: str, wait: bool) -> None:
        ns, name = key.split("/")
        uid = self.current[key]
        try:
            t0 = time.monotonic()
            self.kube.delete(rays_path(ns, name), {"propagationPolicy": "Foreground" if wait else "Background",
                                                   "preconditions": {"uid": uid}})
            with self.book.lock:
                self.book.owners[uid].deleted_at = time.monotonic()
            if wait:
                while True:
                    try:
                        got = self.kube.get(rays_path(ns, name))
                        if got["metadata"]["uid"] != uid:
                            break
                    except ApiError as e:
                        if e.not_found:
                            break
                        raise
                    if time.monotonic() - t0 > self.args.recreate_timeout:
                        raise RuntimeError(f"{key}: the foreground deletion took more than "
                                           f"{self.args.recreate_timeout:g} s")
                    time.sleep(0.5)
                self.counts["delete_wait_seconds_total_ms"] += int(1000 * (time.monotonic() - t0))
            self.create(key)
            self.counts["recreates_waiting" if wait else "recreates_at_once"] += 1
        except Exception as e:  # noqa: BLE001 - reported as a failure of the soak
            self.errors.append(f"re-creating {key}: {e}")
            log(f"ERROR re-creating {key}: {e}")
        finally:
            with self.lock:
                self.busy.discard(key)

    # -- the phases --------------------------------------------------------------------------------------------------

    def idle_keys(self) -> list[str]:
        with self.lock:
            return sorted(k for k in self.current if k not in self.busy)

    def churn(self, operator: rm.Operator, deadline: float, t_start: float) -> None:
        tick = 0
        waiting_next = True
        killed = False
        while time.monotonic() < deadline:
            t_tick = time.monotonic()
            if operator.proc.poll() is not None:
                return
            if self.args.kill_operator_after is not None and not killed and \
                    t_tick - t_start >= self.args.kill_operator_after:
                log(f"deliberate fault: SIGKILL to the operator (pid {operator.pid})")
                os.kill(operator.pid, signal.SIGKILL)
                killed = True
            keys = self.idle_keys()
            for key in self.rng.sample(keys, max(1, round(self.args.scale_fraction * len(keys)))):
                try:
                    self.scale(key)
                except ApiError as e:
                    self.errors.append(f"scaling {key}: {e}")
            keys = self.idle_keys()
            for key in self.rng.sample(keys, min(self.args.head_kills, len(keys))):
                self.kill_head(key)
            if self.args.recreates and tick % self.args.recreate_every == self.args.recreate_every - 1:
                keys = self.idle_keys()
                for key in self.rng.sample(keys, min(self.args.recreates, len(keys))):
                    with self.lock:
                        self.busy.add(key)
                    t = threading.Thread(target=self.recreate, args=(key, waiting_next), daemon=True,
                                         name=f"recreate {key}")
                    waiting_next = not waiting_next
                    t.start()
                    self.threads.append(t)
            tick += 1
            if tick % 6 == 0:
                log(f"churn: {tick} ticks, {dict(self.counts)}, violations {dict(self.book.violations)}, "
                    f"load {rm.loadavg()}")
            time.sleep(max(0.0, self.args.interval - (time.monotonic() - t_tick)))
        for t in self.threads:
            t.join(self.args.recreate_timeout + 60)

    def settled(self) -> tuple[bool, list[str]]:
        """Every current Ray Ready with exactly its desired pods (all ready); nothing left of deleted owners."""
        problems = []
        with self.lock:
            current = dict(self.current)
        ready_pods = self.ready_pods()
        for key, uid in sorted(current.items()):
            owner = self.book.owners[uid]
            live = self.book.live_of(uid)
            want = {HEAD: 1, **{g: owner.current(g) for g in GROUPS}}
            if not self.rays.ready(key, uid):
                problems.append(f"{key}: not Ready for its generation")
            if dict(live) != {g: n for g, n in want.items() if n}:
                problems.append(f"{key}: live pods {dict(live)} != desired {want}")
            if ready_pods.get(uid, 0) != sum(want.values()):
                problems.append(f"{key}: {ready_pods.get(uid, 0)} ready pods of {sum(want.values())}")
        live_uids = set(current.values())
        with self.book.lock:
            leftovers = sorted(self.book.names[p] for p, (o, _, _) in self.book.pods.items() if o not in live_uids)
        if leftovers:
            problems.append(f"{len(leftovers)} pods of deleted Rays still exist: {leftovers[:5]}")
        return not problems, problems

    def ready_pods(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for pod in self.kube.get("/api/v1/pods", labelSelector=f"{LABEL_MANAGED_BY}={MANAGED_BY}")["items"]:
            if pod["metadata"]["namespace"] in self.book.namespaces and rm.pod_ready(pod) \
                    and not pod["metadata"].get("deletionTimestamp"):
                uid = owner_uid(pod)
                if uid and (pod["metadata"].get("labels") or {}).get(LABEL_ROLE) in (ROLE_HEAD, ROLE_WORKER):
                    out[uid] += 1
        return out

    def orphans(self) -> list[str]:
        """Pods, ConfigMaps, Services and Jobs of the soak's namespaces whose controller owner does not exist."""
        live: set[str] = set()
        for ns in self.namespaces:
            live |= {r["metadata"]["uid"] for r in self.kube.get(rays_path(ns))["items"]}
            live |= {j["metadata"]["uid"] for j in self.kube.get(f"/apis/batch/v1/namespaces/{ns}/jobs")["items"]}
        out = []
        for ns in self.namespaces:
            for path in (f"/api/v1/namespaces/{ns}/pods", f"/api/v1/namespaces/{ns}/configmaps",
                         f"/api/v1/namespaces/{ns}/services", f"/apis/batch/v1/namespaces/{ns}/jobs"):
                for obj in self.kube.get(path)["items"]:
                    uid = owner_uid(obj)
                    managed = (obj["metadata"].get("labels") or {}).get(LABEL_MANAGED_BY) == MANAGED_BY
                    if (uid is not None and uid not in live) or (uid is None and managed):
                        out.append(f"{path.rsplit('/', 1)[1]} {ns}/{obj['metadata']['name']} (owner {uid})")
        return out


def run_soak(args: argparse.Namespace, plane: rm.ControlPlane, kube: KubeClient, run: str,
             out_dir: Path) -> dict[str, Any]:
    namespaces = [f"soak-{run}-{i}" for i in range(args.namespaces)]
    rm.create_namespaces(kube, namespaces, run)
    soak = Soak(args, kube, run, namespaces)
    failures: list[str] = []
    result: dict[str, Any] = {"namespaces": namespaces, "failures": failures}
    operator = rm.Operator(plane.kubeconfig, namespaces, out_dir / "operator.log", None, None, None,
                           entry=[sys.executable, str(rm.WRAPPER)])
    log(f"operator pid {operator.pid}, metrics on 127.0.0.1:{operator.port}, log {operator.log_path}")
    rss: list[tuple[float, float]] = []
    pods: list[int] = []  # the pods that exist (terminating ones too) at each RSS sample, from the pod watch
    stop_sampling = threading.Event()

    def sample() -> None:
        while not stop_sampling.is_set():
            kib = rm.status_kib(operator.pid, "VmRSS")
            if kib is not None and operator.proc.poll() is None:
                with soak.book.lock:
                    existing = len(soak.book.pods)
                rss.append((time.monotonic(), kib / 1024))
                pods.append(existing)
            stop_sampling.wait(args.rss_every)

    sampler = threading.Thread(target=sample, name="rss", daemon=True)
    sampler.start()
    ray_watch = rm.CollectionWatch(kube, f"/apis/{GROUP}/{VERSION}/{PLURAL}", f"{rm.BENCH_LABEL}={run}",
                                   soak.rays.on_ray, soak.rays.on_deleted, soak.rays.on_list)

    def on_list(items: list[dict[str, Any]], now: float) -> None:
        soak.book.on_list(items, now)
        soak.heads.on_list(items, now)

    pod_watch = rm.CollectionWatch(kube, "/api/v1/pods", f"{LABEL_MANAGED_BY}={MANAGED_BY}", soak.heads.on_pod,
                                   soak.heads.on_deleted, on_list)
    ray_watch.synced.wait(30)
    pod_watch.synced.wait(30)
    stop_sweeping = threading.Event()

    def sweep() -> None:
        while not stop_sweeping.wait(1.0):
            soak.book.sweep(time.monotonic())

    sweeper = threading.Thread(target=sweep, name="sweep", daemon=True)
    sweeper.start()

    def operator_alive(phase: str) -> bool:
        code = operator.proc.poll()
        if code is not None and not any("operator exited" in f for f in failures):
            failures.append(f"the operator exited with code {code} during {phase}")
        return code is None

    def settle(phase: str) -> tuple[bool, float, list[str]]:
        t0 = time.monotonic()
        problems: list[str] = []
        next_log = t0 + 15
        while time.monotonic() - t0 < args.settle_timeout and operator_alive(phase):
            ok, problems = soak.settled()
            if ok:
                orphaned = soak.orphans()
                if not orphaned:
                    return True, time.monotonic() - t0, []
                problems = [f"{len(orphaned)} orphans: {orphaned[:5]}"]
            if time.monotonic() >= next_log:
                log(f"{phase}: {len(problems)} problem(s), e.g. {problems[:2]} (load {rm.loadavg()})")
                next_log += 15
            time.sleep(2)
        return False, time.monotonic() - t0, problems

    try:
        keys = [f"{namespaces[i % len(namespaces)]}/ray-{i:04d}" for i in range(args.rays)]
        t0 = time.monotonic()
        log(f"creating {args.rays} Rays ({PODS_PER_RAY} pods each) in {len(namespaces)} namespaces "
            f"(load {rm.loadavg()})")
        def creator(key: str) -> Callable[[], None]:
            return lambda: None if soak.create(key) else None

        rm.run_parallel(8, [creator(k) for k in keys])
        ok, seconds, problems = settle("start")
        result["start"] = {"settled": ok, "seconds_to_ready": time.monotonic() - t0, "problems": problems[:20],
                           "pods_per_ray": {"head": 1, **{g: n for g, (_, _, n) in GROUPS.items()}}}
        if not ok:
            failures.append(f"the initial Rays did not become Ready with their pods: {problems[:5]}")
        else:
            by_group: Counter[str] = Counter()
            for uid in soak.current.values():
                by_group.update(soak.book.live_of(uid))
            result["start"]["pods_by_group"] = dict(by_group)
            log(f"all {args.rays} Rays Ready with {PODS_PER_RAY} pods in {time.monotonic() - t0:.1f} s: "
                f"{dict(by_group)}")
        m0, a0, cpu0 = operator.metrics(), rm.apiserver_metrics(kube), operator.cpu()
        t_churn = time.monotonic()
        if ok:
            log(f"churn for {args.minutes:g} minutes (load {rm.loadavg()})")
            soak.churn(operator, t_churn + 60 * args.minutes, t_churn)
        t_churned = time.monotonic()
        rss_churn = [(t, v) for t, v in rss if t_churn <= t <= t_churned]
        rss_pods_churn = [(t, v, n) for (t, v), n in zip(rss, pods) if t_churn <= t <= t_churned]
        result["churn"] = {"seconds": t_churned - t_churn, "injected": dict(soak.counts),
                           "errors": soak.errors[:20]}
        failures.extend(soak.errors[:20])
        if operator_alive("the churn"):
            m1, a1, cpu1 = operator.metrics(), rm.apiserver_metrics(kube), operator.cpu()
            result["churn"].update({
                "operator_cpu_seconds": cpu1 - cpu0,
                "operator_requests_by_resource": rm.diff(rm.by_resource(m1, "rayop_bench_api_requests_total"),
                                                         rm.by_resource(m0, "rayop_bench_api_requests_total")),
                "operator_non_2xx": rm.diff(rm.error_codes(m1), rm.error_codes(m0)),
                "reconciles": int(rm.metric_sum(m1, "controller_runtime_reconcile_total")
                                  - rm.metric_sum(m0, "controller_runtime_reconcile_total")),
                "apiserver_writes_by_resource": rm.writes_of(rm.diff(rm.by_resource(a1, "apiserver_request_total"),
                                                                     rm.by_resource(a0, "apiserver_request_total"))),
            })
            log(f"churn done ({dict(soak.counts)}); settling (load {rm.loadavg()})")
            ok, seconds, problems = settle("the settle")
            result["settle"] = {"settled": ok, "seconds": seconds, "problems": problems[:20]}
            if not ok:
                failures.append(f"not settled {seconds:.0f} s after the churn: {problems[:5]}")
        if not failures and operator_alive("the idle window"):
            m2, cpu2 = operator.metrics(), operator.cpu()
            log(f"settled; idle window of {args.idle_seconds:g} s")
            time.sleep(args.idle_seconds)
            if operator_alive("the idle window"):
                m3 = operator.metrics()
                requests = rm.diff(rm.requests_by_verb(m3), rm.requests_by_verb(m2))
                writes = sum(n for v, n in requests.items() if v in rm.WRITE_VERBS)
                result["idle"] = {
                    "seconds": args.idle_seconds, "writes": writes, "requests_by_verb": requests,
                    "requests_by_resource": rm.diff(rm.by_resource(m3, "rayop_bench_api_requests_total"),
                                                    rm.by_resource(m2, "rayop_bench_api_requests_total")),
                    "reconciles": int(rm.metric_sum(m3, "controller_runtime_reconcile_total")
                                      - rm.metric_sum(m2, "controller_runtime_reconcile_total")),
                    "operator_cpu_seconds": operator.cpu() - cpu2,
                }
                if writes:
                    failures.append(f"the operator wrote {writes} times in the idle window: {requests}")
        operator_alive("the run")
        with soak.book.lock:
            book = soak.book
            excess = sorted(book.excess_seconds)
            result["checks"] = {
                "lag_seconds": args.lag_seconds, "surge": args.surge,
                "violations": dict(book.violations), "examples": dict(book.examples),
                "pod_events": book.events, "pods_created": book.created, "owners": len(book.owners),
                "pods_of_unknown_owners": len(book.unknown_owner_pods),
                "most_live_above_current_desired": book.most_over_current,
                "above_current_desired_episodes": len(excess),
                "above_current_desired_seconds": rm.percentiles(excess),
            }
            for kind, n in book.violations.items():
                failures.append(f"{n} x {kind}, e.g. {book.examples[kind][0]}")
        result["operator"] = {
            "exit_code": operator.proc.poll(),
            "peak_rss_mib": (rm.status_kib(operator.pid, "VmHWM") or 0) / 1024,
            "rss_mib": {"first": rss[0][1] if rss else None, "last": rss[-1][1] if rss else None,
                        "peak_sampled": max((v for _, v in rss), default=None),
                        "samples": len(rss), "every_seconds": args.rss_every,
                        "at_churn_start": rss_churn[0][1] if rss_churn else None,
                        "at_churn_end": rss_churn[-1][1] if rss_churn else None},
            "rss_slope_mib_per_hour_churn": slope_per_hour(rss_churn),
            "rss_slope_mib_per_hour_all": slope_per_hour(rss),
            # A leak grows with the operations, which go on at one pace through the churn: the slope of each half
            # (and of the last third) tells a curve that levels off from a line.
            "rss_slope_mib_per_hour_churn_halves": [slope_per_hour(rss_churn[:len(rss_churn) // 2]),
                                                    slope_per_hour(rss_churn[len(rss_churn) // 2:])],
            "rss_slope_mib_per_hour_churn_last_third": slope_per_hour(rss_churn[2 * len(rss_churn) // 3:]),
            "rss_fit_churn": fit_rss(rss_pods_churn),
            "cpu_seconds_total": operator.cpu(),
        }
        (out_dir / "rss.json").write_text(json.dumps([[t, v, n] for (t, v), n in zip(rss, pods)]))
    finally:
        stop_sampling.set()
        stop_sweeping.set()
        ray_watch.stop.set()
        pod_watch.stop.set()
        result["cleanup_seconds"] = cleanup(kube, namespaces, args.cleanup_timeout)
        code = operator.stop()
        log(f"operator stopped (exit {code}); namespaces gone after {result['cleanup_seconds']} s")
    return result


def cleanup(kube: KubeClient, namespaces: list[str], timeout: float) -> float | None:
    """The Rays first (the operator still runs; their pods end at once in sim mode), then the namespaces."""
    t0 = time.monotonic()
    for ns in namespaces:
        try:
            kube.delete(rays_path(ns), {"propagationPolicy": "Background"})
        except ApiError as e:
            log(f"deleting the Rays of {ns}: {e}")
    while time.monotonic() - t0 < min(timeout, 300):
        left = sum(len(kube.get(f"/api/v1/namespaces/{ns}/pods", limit=1)["items"]) for ns in namespaces)
        if not left:
            break
        time.sleep(2)
    gone = rm.delete_namespaces(kube, namespaces, timeout)
    return None if gone is None else time.monotonic() - t0


def report(results: dict[str, Any]) -> str:
    soak = results["soak"]
    start, churn, checks = soak.get("start", {}), soak.get("churn", {}), soak.get("checks", {})
    settle, idle, op = soak.get("settle", {}), soak.get("idle", {}), soak.get("operator", {})
    rss = op.get("rss_mib", {})

    def num(value: Any, fmt: str = ".1f") -> str:
        return "n/a" if value is None else format(value, fmt)

    injected = churn.get("injected", {})
    lines = [
        f"soak: {results['rays']} Rays ({PODS_PER_RAY} pods each at the start) in {results['namespaces']} "
        f"namespaces, {results['minutes']:g} minutes of churn; {results['cpus']} CPUs, Kubernetes "
        f"{results['kubernetes']}, {results['nodes']} Nodes; load {results['load_before']} -> "
        f"{results.get('load_after', '?')} (a shared machine: CPU numbers are noisy)",
        f"start: all Ready with their pods after {num(start.get('seconds_to_ready'))} s "
        f"({start.get('pods_by_group', {})})",
        f"churn {num(churn.get('seconds'), '.0f')} s: scale-ups {injected.get('scale_up', 0)}, scale-downs "
        f"{injected.get('scale_down', 0)}, re-creates waiting {injected.get('recreates_waiting', 0)} / at once "
        f"{injected.get('recreates_at_once', 0)}, head kills {injected.get('head_kills', 0)}; "
        f"{churn.get('reconciles', 'n/a')} reconciles, operator CPU {num(churn.get('operator_cpu_seconds'))} s",
        f"  operator's writes: " + ", ".join(f"{k} {n}" for k, n in sorted(
            rm.writes_of(churn.get("operator_requests_by_resource") or {}).items(), key=lambda kv: -kv[1])),
        f"  non-2xx: {churn.get('operator_non_2xx', {})}",
        f"checks (L = {checks.get('lag_seconds')} s, surge {checks.get('surge')}): violations "
        f"{checks.get('violations') or 'none'}; {checks.get('pod_events')} pod events, {checks.get('pods_created')} "
        f"pods created, {checks.get('owners')} owners",
        f"  above the current desired count: at most +{checks.get('most_live_above_current_desired')}, "
        f"{checks.get('above_current_desired_episodes')} episodes, "
        f"{rm.fmt_p(checks.get('above_current_desired_seconds') or {})}",
        f"settle after the churn: {'yes' if settle.get('settled') else 'NO'} in {num(settle.get('seconds'))} s",
        f"idle {num(idle.get('seconds'), '.0f')} s: operator writes {idle.get('writes', 'n/a')} "
        f"({idle.get('requests_by_verb', {})}), {idle.get('reconciles', 'n/a')} reconciles, CPU "
        f"{num(idle.get('operator_cpu_seconds'), '.2f')} s",
        f"operator RSS: first {num(rss.get('first'))}, churn start {num(rss.get('at_churn_start'))}, churn end "
        f"{num(rss.get('at_churn_end'))}, last {num(rss.get('last'))}, peak {num(rss.get('peak_sampled'))} MiB "
        f"(VmHWM {num(op.get('peak_rss_mib'))}); slope over the churn "
        f"{num(op.get('rss_slope_mib_per_hour_churn'))} MiB/h (first half "
        f"{num((op.get('rss_slope_mib_per_hour_churn_halves') or [None, None])[0])}, second half "
        f"{num((op.get('rss_slope_mib_per_hour_churn_halves') or [None, None])[1])}, last third "
        f"{num(op.get('rss_slope_mib_per_hour_churn_last_third'))}; {rss.get('samples')} samples every "
        f"{rss.get('every_seconds')} s); " + ("still running before the clean-up" if op.get("exit_code") is None
                                                else f"EXITED with {op.get('exit_code')}"),
        "operator RSS against the pods that exist (least squares over the churn): " + (
            f"{fit['mib_per_pod'] * 1024:.1f} KiB per pod, {fit['mib_per_hour_beyond_pods']:.1f} MiB/h beyond "
            f"that (pods {fit['pods_first']} -> {fit['pods_last']}, {fit['pods_min']} to {fit['pods_max']})"
            if (fit := op.get("rss_fit_churn")) else "not enough variation to fit"),
        f"cleanup: namespaces gone after {num(soak.get('cleanup_seconds'), '.0f')} s",
    ]
    failures = soak.get("failures") or []
    lines.append("RESULT: " + ("PASS" if not failures else "FAIL\n  - " + "\n  - ".join(failures)))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rays", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds per churn tick (default 10)")
    parser.add_argument("--scale-fraction", type=float, default=0.1, help="Rays scaled per tick (default 0.1)")
    parser.add_argument("--recreates", type=int, default=2, help="Rays deleted and re-created per cycle (default 2)")
    parser.add_argument("--recreate-every", type=int, default=3, help="ticks per re-create cycle (default 3)")
    parser.add_argument("--recreate-timeout", type=float, default=300.0)
    parser.add_argument("--head-kills", type=int, default=1, help="head pods deleted per tick (default 1)")
    parser.add_argument("--lag-seconds", type=float, default=30.0,
                        help="L: how long an old desired count stays allowed after its change (default 30)")
    parser.add_argument("--surge", type=int, default=1, help="pods allowed above desired (default 1, maxSurge's "
                        "default; -1 makes the check fail on purpose)")
    parser.add_argument("--rss-every", type=float, default=5.0)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--settle-timeout", type=float, default=600.0)
    parser.add_argument("--cleanup-timeout", type=float, default=900.0)
    parser.add_argument("--kill-operator-after", type=float, default=None, metavar="SECONDS",
                        help="deliberate fault: SIGKILL the operator this long into the churn")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--kubeconfig", default=None, help="reuse this control plane (default: bring one up)")
    parser.add_argument("--cluster-dir", type=Path, default=Path("/tmp/rayop-soak"))
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--keep-cluster", action="store_true")
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, rm._interrupt)
    signal.signal(signal.SIGINT, rm._interrupt)
    if args.seed is None:
        args.seed = random.randrange(2**31)
    run = f"{int(time.time()) % 10**6:06d}"
    out_dir = args.out_dir or Path("/tmp/rayop-bench-results") / f"soak-{run}"
    out_dir.mkdir(parents=True, exist_ok=True)
    plane = rm.ControlPlane(args.kubeconfig, args.cluster_dir, args.nodes, args.keep_cluster)
    kube = KubeClient.load(plane.kubeconfig, qps=0)
    results: dict[str, Any] = {}
    try:
        rm.install_crd(kube)
        results = {
            "run": run, "rays": args.rays, "minutes": args.minutes, "namespaces": args.namespaces,
            "seed": args.seed, "kubernetes": kube.get("/version").get("gitVersion"),
            "python": sys.version.split()[0], "cpus": os.cpu_count(),
            "nodes": len(kube.get("/api/v1/nodes")["items"]), "command": " ".join(sys.argv),
            "load_before": rm.loadavg(), "out_dir": str(out_dir),
        }
        log(f"soak {run}: seed {args.seed}, results in {out_dir}")
        results["soak"] = run_soak(args, plane, kube, run, out_dir)
        results["load_after"] = rm.loadavg()
    finally:
        kube.close()
        plane.down()
    rm.write_results(results, out_dir, args.json, report)
    sys.exit(1 if results["soak"]["failures"] else 0)


if __name__ == "__main__":
    main()
