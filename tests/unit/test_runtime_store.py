"""Store, indexes, replace/tombstones, transforms and the mutation detector."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from rayop.runtime.kube import loads
from rayop.runtime.store import (
    INDEX_LABEL,
    INDEX_NAMESPACE,
    INDEX_OWNER_UID,
    LAST_APPLIED,
    CacheMutationError,
    ObjectKey,
    Store,
    make_trimmer,
    trim_object,
)


def pod(ns: str, name: str, rv: str = "1", owner: str | None = None, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": ns, "name": name, "resourceVersion": rv, "labels": dict(labels)}
    if owner:
        meta["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Other", "name": "x", "uid": "not-me"},
            {"apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray", "name": "r", "uid": owner, "controller": True},
        ]
    return {"metadata": meta, "spec": {}}


def test_object_key() -> None:
    key = ObjectKey.of(pod("ns", "a"))
    assert key == ObjectKey("ns", "a")
    assert str(key) == "ns/a"
    assert ObjectKey.parse("ns/a") == key
    assert str(ObjectKey("", "cluster-scoped")) == "cluster-scoped"


def test_upsert_delete_and_indexes() -> None:
    store = Store()
    assert store.upsert(pod("a", "p1", owner="u1", app="x")) is None
    store.upsert(pod("a", "p2", owner="u1", app="y"))
    store.upsert(pod("b", "p3", app="x"))
    assert len(store) == 3
    assert {o["metadata"]["name"] for o in store.by_index(INDEX_NAMESPACE, "a")} == {"p1", "p2"}
    assert {o["metadata"]["name"] for o in store.by_index(INDEX_OWNER_UID, "u1")} == {"p1", "p2"}
    assert store.by_index(INDEX_OWNER_UID, "not-me") == [], "only the controller reference is indexed"
    assert {o["metadata"]["name"] for o in store.by_index(INDEX_LABEL, "app=x")} == {"p1", "p3"}

    old = store.upsert(pod("a", "p1", rv="2", app="y"))
    assert old is not None and old["metadata"]["resourceVersion"] == "1"
    assert {o["metadata"]["name"] for o in store.by_index(INDEX_LABEL, "app=x")} == {"p3"}
    assert {o["metadata"]["name"] for o in store.by_index(INDEX_OWNER_UID, "u1")} == {"p2"}

    assert store.delete(ObjectKey("a", "p2")) is not None
    assert store.delete(ObjectKey("a", "p2")) is None
    assert store.by_index(INDEX_OWNER_UID, "u1") == []
    assert "u1" not in store.index_values(INDEX_OWNER_UID), "empty index buckets are dropped"


def test_replace_reports_adds_updates_and_vanished_objects() -> None:
    store = Store()
    store.upsert(pod("a", "keep"))
    store.upsert(pod("a", "change"))
    store.upsert(pod("a", "gone"))
    store.upsert(pod("b", "other-scope"))
    changes = store.replace([pod("a", "keep"), pod("a", "change", rv="2"), pod("a", "new")], scope="a")
    summary = sorted(
        ("add" if c.old is None else "delete" if c.new is None else "update", ObjectKey.of(c.new or c.old or {}).name)
        for c in changes
    )
    assert summary == [("add", "new"), ("delete", "gone"), ("update", "change")]
    assert ObjectKey("b", "other-scope") in store, "a namespace-scoped replace leaves other namespaces alone"
    store.replace([], scope=None)
    assert len(store) == 0


def test_trim_drops_managed_fields_and_last_applied_and_interns() -> None:
    a = {"metadata": {"name": "a", "managedFields": [{"manager": "kubectl"}],
                      "annotations": {LAST_APPLIED: "{}"}}, "status": {"phase": "Running"}}
    b = {"metadata": {"name": "b", "annotations": {LAST_APPLIED: "{}", "keep": "me"}},
         "status": {"phase": "Run" + "ning"}}
    ta, tb = trim_object(a), trim_object(b)
    assert "managedFields" not in ta["metadata"]
    assert "annotations" not in ta["metadata"]
    assert tb["metadata"]["annotations"] == {"keep": "me"}
    assert ta["status"]["phase"] is tb["status"]["phase"], "short values are interned"


def test_decoded_objects_share_their_keys_and_trimmed_ones_their_short_values() -> None:
    raw = (b'{"metadata": {"name": "p", "managedFields": [{"manager": "x"}], "labels": {"ray.k8s.io/node-kind": '
           b'"worker"}}, "status": {"conditions": [{"type": "Ready", "status": "True"}], "podIP": "10.1.2.3"}}')
    a, b = trim_object(loads(raw)), trim_object(loads(raw))
    assert a == b == {"metadata": {"name": "p", "labels": {"ray.k8s.io/node-kind": "worker"}},
                      "status": {"conditions": [{"type": "Ready", "status": "True"}], "podIP": "10.1.2.3"}}
    cond_a, cond_b = a["status"]["conditions"][0], b["status"]["conditions"][0]
    assert [k for k in cond_a][0] is [k for k in cond_b][0], "keys: one copy, from the decoder"
    assert next(iter(a["metadata"]["labels"])) is next(iter(b["metadata"]["labels"]))
    assert cond_a["status"] is cond_b["status"] and a["status"]["podIP"] is b["status"]["podIP"], "values: interned"
    key = "example.com/a-label-key-longer-than-the-decoders-cache"
    e, f = (trim_object(loads(f'{{"metadata": {{"labels": {{"{key}": "v"}}}}}}'.encode())) for _ in range(2))
    assert next(iter(e["metadata"]["labels"])) is next(iter(f["metadata"]["labels"])), "keys it did not share: interned"
    long = "x" * 40
    c, d = trim_object(loads(f'{{"v": "{long}"}}'.encode())), trim_object(loads(f'{{"v": "{long}"}}'.encode()))
    assert c["v"] == d["v"] and c["v"] is not d["v"], "long values (names with hashes, uids) are not interned"


def test_trimmer_drops_dotted_paths_through_lists() -> None:
    trim = make_trimmer(["spec.volumes", "spec.containers.*.env"])
    obj = {"metadata": {}, "spec": {"volumes": [1], "containers": [{"name": "a", "env": [1]}, {"name": "b"}]}}
    assert trim(obj)["spec"] == {"containers": [{"name": "a"}, {"name": "b"}]}


def test_mutation_detector_catches_a_reader_that_edits() -> None:
    store = Store(mutation_detector=True)
    store.upsert(pod("a", "p1", app="x"))
    store.check_mutations()
    obj = store.get(ObjectKey("a", "p1"))
    assert obj is not None
    copy.deepcopy(obj)["metadata"]["labels"]["app"] = "fine"
    store.check_mutations()
    obj["metadata"]["labels"]["app"] = "bad"
    with pytest.raises(CacheMutationError, match="a/p1"):
        store.check_mutations()
