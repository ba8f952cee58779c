"""GCS fault tolerance (spec.gcsFaultTolerance): the conversion in both forms and its errors, what the head and the
workers get, the clean-up Job, the clean-up plan of a deleted Ray, and the reconciler's finalizer on in-memory
caches."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from rayop.api.convert import effective_cluster
from rayop.api.model import ConfigurationError, GcsFaultTolerance
from rayop.autoscaler import inpod_files
from rayop.build import (
    REDIS_PASSWORD_ENV,
    build_children,
    build_gcs_cleanup_job,
    gcs_cleanup_job_name,
)
from rayop.defaults import Options
from rayop.gcscleanup import DEADLINE_GRACE_SECONDS, FINALIZER, plan_cleanup
from rayop.objects import LABEL_ROLE
from rayop.runtime.store import ObjectKey
from tests.support.fakes import namespace_terminating
from tests.unit.test_reconciler_apply import Rig

NS = "ns"
UID = "0b6c7a3e-uid"
FT = {"redisAddress": "redis.db.svc.cluster.local:6380",
      "redisPassword": {"secretKeyRef": {"name": "redis-auth", "key": "password"}}}
CONFIGURATION = """\
cluster_name: c
max_workers: 1
available_node_types:
  head: {node_config: {}, resources: {CPU: 1}}
  w: {node_config: {}, min_workers: 1, max_workers: 1, resources: {CPU: 1}}
head_node_type: head
"""


def ray(spec: dict[str, Any], uid: str = UID, name: str = "r") -> dict[str, Any]:
    return {"apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray",
            "metadata": {"name": name, "namespace": NS, "uid": uid, "generation": 1, "resourceVersion": "7"},
            "spec": copy.deepcopy(spec)}


def structured(ft: Any = FT) -> dict[str, Any]:
    return ray({"minWorkers": 1, "maxWorkers": 1, "autoScalingMode": "disabled", "gcsFaultTolerance": ft})


def children(obj: dict[str, Any], options: Options | None = None) -> Any:
    return build_children(obj, effective_cluster(obj).cluster, options or Options(), programs=inpod_files())


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


# -- conversion ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("obj", [structured(), ray({"configuration": CONFIGURATION, "gcsFaultTolerance": FT})],
                         ids=["structured", "configuration"])
def test_both_forms_carry_the_block_into_the_model(obj: dict[str, Any]) -> None:
    ft = effective_cluster(obj).cluster.gcs_fault_tolerance
    assert ft == GcsFaultTolerance("redis.db.svc.cluster.local", 6380, ("redis-auth", "password"), None)


def test_without_the_block_the_model_has_none_and_the_optional_fields_default() -> None:
    assert effective_cluster(ray({"minWorkers": 1})).cluster.gcs_fault_tolerance is None
    ft = effective_cluster(structured({"redisAddress": "[fd00::1]:6379", "externalStorageNamespace": "keep:1"}))
    assert ft.cluster.gcs_fault_tolerance == GcsFaultTolerance("[fd00::1]", 6379, None, "keep:1")


@pytest.mark.parametrize("ft, field, words", [
    ({"redisAddress": "redis"}, "spec.gcsFaultTolerance.redisAddress", "must be host:port"),
    ({"redisAddress": "redis://r:6379"}, "spec.gcsFaultTolerance.redisAddress", "must be host:port"),
    ({"redisAddress": "r:0"}, "spec.gcsFaultTolerance.redisAddress", "1-65535"),
    ({"redisAddress": "r:70000"}, "spec.gcsFaultTolerance.redisAddress", "1-65535"),
    ({}, "spec.gcsFaultTolerance.redisAddress", "required"),
    ({"redisAddress": "r:1", "redisPassword": {}}, "spec.gcsFaultTolerance.redisPassword.secretKeyRef", "required"),
    ({"redisAddress": "r:1", "redisPassword": {"secretKeyRef": {"key": "k"}}},
     "spec.gcsFaultTolerance.redisPassword.secretKeyRef.name", "required"),
    ({"redisAddress": "r:1", "redisPassword": {"secretKeyRef": {"name": "Bad_Name", "key": "k"}}},
     "spec.gcsFaultTolerance.redisPassword.secretKeyRef.name", "must name a Secret"),
    ({"redisAddress": "r:1", "redisPassword": {"secretKeyRef": {"name": "s", "key": "a/b"}}},
     "spec.gcsFaultTolerance.redisPassword.secretKeyRef.key", "must be a Secret key"),
    ({"redisAddress": "r:1", "externalStorageNamespace": "two words"},
     "spec.gcsFaultTolerance.externalStorageNamespace", "[-_.:a-zA-Z0-9]"),
    ("r:1", "spec.gcsFaultTolerance", "object"),
])
def test_invalid_blocks_are_configuration_errors_naming_the_field(ft: Any, field: str, words: str) -> None:
    for obj in (structured(ft), ray({"configuration": CONFIGURATION, "gcsFaultTolerance": ft})):
        with pytest.raises(ConfigurationError) as e:
            effective_cluster(obj)
        assert e.value.field == field and words in e.value.message, e.value.describe()


# -- builders -----------------------------------------------------------------------------------------------------


def test_the_head_gets_redis_the_namespace_and_the_password_from_the_secret_only() -> None:
    d = children(structured())
    head = d.head.manifest["spec"]["containers"][0]
    values = env(head)
    assert values["RAY_REDIS_ADDRESS"] == "redis.db.svc.cluster.local:6380"
    assert values["RAY_external_storage_namespace"] == UID  # the Ray's UID: unique and stable per cluster
    assert values[REDIS_PASSWORD_ENV] == {"secretKeyRef": {"name": "redis-auth", "key": "password"}}
    script = head["args"][0]
    assert script.endswith(f' --redis-password="${REDIS_PASSWORD_ENV}"')  # expanded by the shell from the env
    worker = d.workers[0].manifest["spec"]["containers"][0]
    assert "--redis-password" not in worker["args"][0] and "RAY_REDIS_ADDRESS" not in env(worker)


def test_workers_wait_long_for_the_gcs_and_retry_often() -> None:
    d = children(structured(), Options(gcs_reconnect_timeout_seconds=900))
    values = env(d.workers[0].manifest["spec"]["containers"][0])
    assert values["RAY_gcs_rpc_server_reconnect_timeout_s"] == "900"
    assert int(values["RAY_gcs_grpc_max_reconnect_backoff_ms"]) <= 1000
    assert "RAY_gcs_rpc_server_reconnect_timeout_s" not in env(d.head.manifest["spec"]["containers"][0])


def test_a_cluster_without_the_block_gets_none_of_it_and_the_block_rolls_pods() -> None:
    plain = children(ray({"minWorkers": 1, "maxWorkers": 1, "autoScalingMode": "disabled"}))
    text = json.dumps([plain.head.manifest, plain.workers[0].manifest])
    assert "REDIS" not in text and "RAY_gcs" not in text and "external_storage" not in text
    with_ft = children(structured())
    assert with_ft.head.template_hash != plain.head.template_hash
    assert with_ft.workers[0].template_hash != plain.workers[0].template_hash
    # Another namespace, another Redis, another password Secret: a new head.
    other = children(structured({**FT, "externalStorageNamespace": "other"}))
    assert other.head.template_hash != with_ft.head.template_hash
    assert other.workers[0].template_hash == with_ft.workers[0].template_hash


def test_an_explicit_namespace_wins_and_an_object_never_stored_has_a_stable_one() -> None:
    d = children(structured({**FT, "externalStorageNamespace": "kept"}))
    assert env(d.head.manifest["spec"]["containers"][0])["RAY_external_storage_namespace"] == "kept"
    d = children(ray(structured()["spec"], uid=""))
    assert env(d.head.manifest["spec"]["containers"][0])["RAY_external_storage_namespace"] == "ns-r"


def test_the_cleanup_job_runs_rays_helper_as_the_head_runs() -> None:
    spec = structured()["spec"]
    spec["head"] = {"metadata": {"annotations": {"sidecar.example/inject": "false"}},
                    "spec": {"containers": [{"name": "ray-head", "image": "ray:custom"}],
                             "nodeSelector": {"pool": "ray"}, "imagePullSecrets": [{"name": "pull"}]}}
    obj = ray(spec)
    d = children(obj)
    options = Options(gcs_cleanup_backoff_limit=2, gcs_cleanup_deadline_seconds=120)
    job = build_gcs_cleanup_job(d.owner, d.model, options, d.head)
    assert job is not None
    assert job["metadata"]["name"] == gcs_cleanup_job_name("r") == "r-gcs-cleanup"
    assert job["metadata"]["labels"][LABEL_ROLE] == "gcs-cleanup"
    [owner] = job["metadata"]["ownerReferences"]
    assert owner["uid"] == UID and owner["controller"] is True and owner["blockOwnerDeletion"] is False
    assert job["spec"]["backoffLimit"] == 2 and job["spec"]["activeDeadlineSeconds"] == 120
    pod = job["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"sidecar.example/inject": "false"}
    assert pod["spec"]["nodeSelector"] == {"pool": "ray"} and pod["spec"]["imagePullSecrets"] == [{"name": "pull"}]
    assert pod["spec"]["restartPolicy"] == "Never"
    [container] = pod["spec"]["containers"]
    assert container["image"] == "ray:custom"
    assert container["command"][:2] == ["python", "-c"] and "cleanup_redis_storage" in container["command"][2]
    assert container["command"][3:] == ["redis.db.svc.cluster.local", "6380", UID]
    assert env(container)[REDIS_PASSWORD_ENV] == {"secretKeyRef": {"name": "redis-auth", "key": "password"}}
    plain = children(ray({"minWorkers": 0}))
    assert build_gcs_cleanup_job(plain.owner, plain.model, Options(), plain.head) is None


def test_the_cleanup_script_is_valid_python() -> None:
    d = children(structured())
    job = build_gcs_cleanup_job(d.owner, d.model, Options(), d.head)
    assert job is not None
    compile(job["spec"]["template"]["spec"]["containers"][0]["command"][2], "cleanup", "exec")


# -- the clean-up plan --------------------------------------------------------------------------------------------

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
MODEL_FT = GcsFaultTolerance("redis", 6379, None, None)


def deleted(at: datetime = T0) -> dict[str, Any]:
    obj = structured()
    obj["metadata"]["deletionTimestamp"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    obj["metadata"]["finalizers"] = [FINALIZER]
    return obj


def job(condition: str | None, reason: str = "") -> dict[str, Any]:
    conditions = [{"type": condition, "status": "True", "reason": reason, "message": "m"}] if condition else []
    return {"metadata": {"name": "r-gcs-cleanup"}, "status": {"conditions": conditions}}


def step(job_obj: dict[str, Any] | None, pods: int = 0, after: float = 5, ft: GcsFaultTolerance | None = MODEL_FT,
         invalid: str | None = None) -> Any:
    return plan_cleanup(deleted(), ft=ft, storage_namespace=UID, job=job_obj, pods_left=pods,
                        now=T0 + timedelta(seconds=after), options=Options(gcs_cleanup_deadline_seconds=100),
                        invalid=invalid)


def test_the_plan_waits_for_the_pods_then_creates_the_job_then_waits_for_it() -> None:
    s = step(None, pods=2)
    assert not s.create_job and not s.remove_finalizer and s.requeue_after and s.event is None
    s = step(None)
    assert s.create_job and not s.remove_finalizer and s.event == (
        "Normal", "GcsCleanup", f"deleting the keys RAY{UID}@* in Redis at redis:6379")
    s = step(job(None))
    assert not s.create_job and not s.remove_finalizer and s.requeue_after and s.event is None


def test_the_finalizer_goes_when_the_job_ends_either_way() -> None:
    s = step(job("Complete"))
    assert s.remove_finalizer and s.event is not None and s.event[:2] == ("Normal", "GcsCleanedUp")
    s = step(job("Failed", "BackoffLimitExceeded"))
    assert s.remove_finalizer and s.event is not None and s.event[:2] == ("Warning", "GcsCleanupFailed")
    assert "BackoffLimitExceeded" in s.event[2] and f"RAY{UID}@*" in s.event[2]


def test_the_finalizer_goes_at_the_deadline_whatever_the_job_does() -> None:
    bound = 100 + DEADLINE_GRACE_SECONDS
    for job_obj, pods in ((job(None), 0), (None, 3)):
        s = step(job_obj, pods=pods, after=bound - 1)
        assert not s.remove_finalizer and s.requeue_after is not None and s.requeue_after <= 10
        s = step(job_obj, pods=pods, after=bound)
        assert s.remove_finalizer and s.event is not None and s.event[:2] == ("Warning", "GcsCleanupFailed")
        assert not s.create_job


def test_nothing_to_clean_removes_the_finalizer_with_a_warning() -> None:
    s = step(None, ft=None, invalid="spec.x: bad")
    assert s.remove_finalizer and s.event == ("Warning", "GcsCleanupSkipped",
                                              "Redis was not cleaned up: the configuration is invalid (spec.x: bad)")


# -- the reconciler -----------------------------------------------------------------------------------------------


def catch_up(rig: Rig) -> None:
    """The children's caches show what the writer holds (the Ray's own cache is set by the test)."""
    for (kind, _, _), obj in rig.writer.objects.items():
        if kind != "Ray":
            rig.children[kind].upsert(copy.deepcopy(obj))


def rig_with(obj: dict[str, Any]) -> Rig:
    rig = Rig()
    rig.reconciler._now = lambda: T0 + timedelta(seconds=5)
    rig.writer.put("Ray", NS, obj)
    rig.rays.upsert(copy.deepcopy(rig.writer.objects[("Ray", NS, "r")]))
    return rig


def test_a_ray_with_the_block_gets_the_finalizer_and_one_without_it_no_write_for_it() -> None:
    rig = rig_with(structured())
    rig.reconciler(ObjectKey(NS, "r"))
    assert ("patch", "Ray", "r") in rig.writer.calls
    assert rig.writer.objects[("Ray", NS, "r")]["metadata"]["finalizers"] == [FINALIZER]
    plain = rig_with(ray({"minWorkers": 0}))
    plain.reconciler(ObjectKey(NS, "r"))
    assert ("patch", "Ray", "r") not in plain.writer.calls


def test_a_deleted_ray_deletes_its_pods_then_runs_the_job_then_drops_the_finalizer() -> None:
    rig = rig_with(structured())
    key = ObjectKey(NS, "r")
    rig.reconciler(key)
    catch_up(rig)
    rig.reconciler(key)  # the head exists now; its worker waits for it to run
    pods = rig.writer.names("Pod")
    assert pods
    obj = copy.deepcopy(rig.writer.objects[("Ray", NS, "r")])
    obj["metadata"]["deletionTimestamp"] = T0.strftime("%Y-%m-%dT%H:%M:%SZ")
    rig.rays.upsert(obj)
    catch_up(rig)
    result = rig.reconciler(key)
    assert result is not None and result.requeue_after
    assert not rig.writer.names("Pod")
    # At once, without a drain (a busy worker would hold the deletion up to the drain timeout).
    graces = [opts.get("gracePeriodSeconds") for (kind, _, _), opts in rig.writer.deletes if kind == "Pod"]
    assert graces and all(g == 5 for g in graces)
    assert "r-gcs-cleanup" not in rig.writer.names("Job")
    for pod_key in rig.children["Pod"].keys():  # the cache sees them gone
        rig.children["Pod"].delete(pod_key)
    rig.reconciler(key)
    assert "r-gcs-cleanup" in rig.writer.names("Job")
    assert [e.reason for e in rig.recorder.events][-1] == "GcsCleanup"
    catch_up(rig)
    rig.reconciler(key)
    assert rig.writer.objects[("Ray", NS, "r")]["metadata"]["finalizers"] == [FINALIZER]  # still waiting
    done = copy.deepcopy(rig.writer.objects[("Job", NS, "r-gcs-cleanup")])
    done["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    rig.children["Job"].upsert(done)
    assert rig.reconciler(key) is None
    assert rig.writer.objects[("Ray", NS, "r")]["metadata"]["finalizers"] == []
    assert [e.reason for e in rig.recorder.events][-1] == "GcsCleanedUp"


def test_a_ray_going_with_its_namespace_does_not_wait_for_a_job_that_cannot_be_created() -> None:
    obj = structured()
    obj["metadata"]["finalizers"] = [FINALIZER]
    obj["metadata"]["deletionTimestamp"] = T0.strftime("%Y-%m-%dT%H:%M:%SZ")
    rig = rig_with(obj)
    rig.writer.refuse("create", "Job", namespace_terminating(kind="jobs", name="r-gcs-cleanup"))
    assert rig.reconciler(ObjectKey(NS, "r")) is None
    assert rig.writer.objects[("Ray", NS, "r")]["metadata"]["finalizers"] == []
