"""The pure parts of `kubectl ray` (rayop.kubectl_ray): argument parsing, the manifests it builds, the scale
patch, the tables, the working-dir archive. Everything that talks to Kubernetes is in
tests/integration/test_kubectl_ray.py."""

from __future__ import annotations

import io
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from rayop import kubectl_ray as k
from rayop.api.convert import effective_cluster
from rayop.defaults import DEFAULT_RAY_IMAGE

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 1, 2, 12, 0, 0, tzinfo=timezone.utc)


def ago(seconds: float) -> str:
    return (NOW - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def sample(name: str) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((REPO / "manifests" / "samples" / name).read_text())
    obj["metadata"]["namespace"] = "ns"
    return obj


# -- parsing --------------------------------------------------------------------------------------------------


def test_connection_flags_are_accepted_after_the_command_like_kubectl() -> None:
    args = k.make_parser().parse_args(["get", "cluster", "demo", "-n", "team", "--context", "c1",
                                       "--kubeconfig", "/tmp/kc"])
    assert (args.namespace, args.context, args.kubeconfig, args.names) == ("team", "c1", "/tmp/kc",
                                                                          ["cluster", "demo"])
    assert args.func is k.cmd_get
    # Before the command too; absent everywhere: None (the context's namespace is looked up later).
    args = k.make_parser().parse_args(["-n", "early", "get"])
    assert args.namespace == "early" and args.context is None and args.kubeconfig is None


def test_job_submit_takes_the_entrypoint_after_the_double_dash() -> None:
    args = k.make_parser().parse_args(["job", "submit", "--cluster", "demo", "--wait", "--", "python", "-c",
                                       "print('hi there')", "--cluster", "x"])
    assert args.cluster == "demo" and args.wait and args.func is k.cmd_job_submit
    assert k.entrypoint_of(args.entrypoint) == "python -c 'print('\"'\"'hi there'\"'\"')' --cluster x"
    # One word is the shell command as given.
    assert k.entrypoint_of(["--", "python a.py && echo done"]) == "python a.py && echo done"
    with pytest.raises(k.UserError, match="after --"):
        k.entrypoint_of(["--"])


@pytest.mark.parametrize("argv", [["scale", "demo"], ["create", "cluster", "demo"], ["job", "submit", "--", "ls"],
                                  ["logs", "demo", "--node-kind", "gpu"], ["get", "--bogus"]])
def test_bad_usage_exits_2_naming_the_problem(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        k.make_parser().parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "--help" in err and "Traceback" not in err


def test_main_without_a_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert k.main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_create_cluster_dry_run_prints_the_manifest_without_a_cluster(capsys: pytest.CaptureFixture[str],
                                                                     tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kc"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "a",
        "contexts": [{"name": "a", "context": {"cluster": "x", "user": "u", "namespace": "team-a"}},
                     {"name": "b", "context": {"cluster": "x", "user": "u"}}],
        "clusters": [{"name": "x", "cluster": {"server": "https://127.0.0.1:1"}}], "users": [{"name": "u", "user": {}}]}))
    assert k.main(["create", "cluster", "demo", "--workers", "3", "--dry-run", "--kubeconfig", str(kubeconfig)]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["metadata"] == {"name": "demo", "namespace": "team-a"}
    assert out["spec"]["initialWorkers"] == 3
    assert k.context_namespace(str(kubeconfig), "b") == "default"
    assert k.context_namespace(str(tmp_path / "missing"), None) == "default"


def test_user_errors_print_error_and_exit_nonzero_without_a_traceback(capsys: pytest.CaptureFixture[str],
                                                                     tmp_path: Path) -> None:
    assert k.main(["create", "cluster", "Bad_Name", "--workers", "1", "--dry-run", "-n", "x"]) == 2
    assert "DNS label" in capsys.readouterr().err
    assert k.main(["get", "--kubeconfig", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --kubeconfig") and "no such file" in err
    assert k.main(["create", "cluster", "demo", "--workers", "1", "--head-memory", "lots", "--dry-run",
                   "-n", "x"]) == 2
    assert "--head-memory 'lots' is not a positive Kubernetes quantity" in capsys.readouterr().err


# -- create cluster -------------------------------------------------------------------------------------------


def test_cluster_manifest_is_a_fixed_size_kubernetes_style_ray_the_operator_accepts() -> None:
    ray = k.cluster_manifest("demo", "ns", 2, worker_cpu="2", worker_memory="4Gi")
    spec = ray["spec"]
    assert ray["apiVersion"] == "ray.k8s.io/v1alpha1" and ray["kind"] == "Ray"
    # The samples' and the operator's default image.
    assert spec["image"] == DEFAULT_RAY_IMAGE == sample("static.yaml")["spec"]["image"]
    assert spec["autoScalingMode"] == "disabled"
    worker = spec["worker"]["spec"]["containers"][0]
    assert worker["name"] == "ray-worker"
    assert worker["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"} == worker["resources"]["requests"]
    head = spec["head"]["spec"]["containers"][0]
    assert head["name"] == "ray-head" and head["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}
    model = effective_cluster(ray).cluster
    assert not model.autoscaling.enabled
    assert [(g.name, g.desired_workers) for g in model.worker_groups] == [("worker", 2)]
    assert model.worker_groups[0].resources.cpu == 2


def test_cluster_manifest_with_a_worker_group_uses_worker_groups() -> None:
    ray = k.cluster_manifest("demo", "ns", 4, group="gpu", image="my/ray:1")
    assert "worker" not in ray["spec"] and "initialWorkers" not in ray["spec"]
    assert ray["spec"]["image"] == "my/ray:1"
    model = effective_cluster(ray).cluster
    assert [(g.name, g.min_workers, g.max_workers, g.desired_workers) for g in model.worker_groups] == [
        ("gpu", 0, 4, 4)]


@pytest.mark.parametrize(("name", "group", "message"), [
    ("x" * 53, None, "at most 52"), ("-x", None, "DNS label"), ("demo", "head", "other than 'head'"),
    ("a" * 40, "b" * 17, "together may have at most 56")])
def test_cluster_manifest_refuses_names_the_api_would_refuse(name: str, group: str | None, message: str) -> None:
    with pytest.raises(k.UserError, match=message):
        k.cluster_manifest(name, "ns", 1, group=group)


# -- scale ----------------------------------------------------------------------------------------------------


def desired_after(ray: dict[str, Any], plan: k.ScalePlan) -> dict[str, int]:
    model = effective_cluster(k.apply_json_patch(ray, plan.ops)).cluster
    assert not model.autoscaling.enabled
    return {g.name: g.desired_workers for g in model.worker_groups}


def test_scale_a_fixed_size_ray_up_and_down_through_desired_workers() -> None:
    ray = sample("static.yaml")  # disabled, min 0, max 8, initial 3
    up = k.scale_plan(ray, 5)
    assert up.ops == [{"op": "add", "path": "/spec/desiredWorkers", "value": {"worker": 5}}]
    assert desired_after(ray, up) == {"worker": 5}
    beyond = k.scale_plan(ray, 12)
    assert {"op": "add", "path": "/spec/maxWorkers", "value": 12} in beyond.ops
    assert desired_after(ray, beyond) == {"worker": 12}
    ray["spec"]["minWorkers"] = 2
    ray["spec"]["desiredWorkers"] = {"worker": 4}
    down = k.scale_plan(ray, 0)
    assert down.ops == [{"op": "add", "path": "/spec/desiredWorkers/worker", "value": 0},
                        {"op": "add", "path": "/spec/minWorkers", "value": 0}]
    assert desired_after(ray, down) == {"worker": 0}


def test_scale_a_ray_fixed_only_by_equal_bounds_keeps_it_fixed() -> None:
    ray = {"apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray", "metadata": {"name": "r", "namespace": "ns"},
           "spec": {"minWorkers": 2, "maxWorkers": 2}}  # autoScalingMode unset: default, but nothing to scale
    plan = k.scale_plan(ray, 3)
    assert desired_after(ray, plan) == {"worker": 3}
    patched = k.apply_json_patch(ray, plan.ops)["spec"]
    assert (patched["minWorkers"], patched["maxWorkers"]) == (3, 3)


def test_scale_a_worker_group_patches_that_group_only() -> None:
    ray = k.cluster_manifest("demo", "ns", 1, group="cpu")
    ray["spec"]["workerGroups"].append({"name": "big", "minWorkers": 1, "maxWorkers": 1, "initialWorkers": 1})
    with pytest.raises(k.UserError, match="2 worker groups .cpu, big.; name one with --group"):
        k.scale_plan(ray, 3)
    with pytest.raises(k.UserError, match="no worker group 'gpu'; its groups: cpu, big"):
        k.scale_plan(ray, 3, "gpu")
    plan = k.scale_plan(ray, 3, "cpu")
    assert plan.ops[0] == {"op": "test", "path": "/spec/workerGroups/0/name", "value": "cpu"}
    assert {"op": "add", "path": "/spec/workerGroups/0/maxWorkers", "value": 3} in plan.ops
    assert desired_after(ray, plan) == {"cpu": 3, "big": 1}


def test_scale_refuses_an_autoscaled_ray_saying_what_to_do() -> None:
    with pytest.raises(k.UserError, match="autoscaled .autoScalingMode default.*minWorkers.*disabled"):
        k.scale_plan(sample("seed-structured.yaml"), 2)


def test_scale_a_configuration_form_ray_within_its_bounds_only() -> None:
    ray = sample("legacy-configuration.yaml")
    model = effective_cluster(ray).cluster
    if model.autoscaling.enabled:
        with pytest.raises(k.UserError, match="autoscaled"):
            k.scale_plan(ray, 1)
        # As a fixed-size cluster: its configuration's own autoscaling switched off.
        ray["spec"]["configuration"] = ray["spec"]["configuration"].replace("autoscaling_mode: default",
                                                                            "autoscaling_mode: disabled")
        model = effective_cluster(ray).cluster
    assert not model.autoscaling.enabled, "the sample should be turned into a fixed-size cluster"
    group = model.worker_groups[0]
    plan = k.scale_plan(ray, group.max_workers, group.name)
    assert plan.ops == [{"op": "add", "path": "/spec/desiredWorkers", "value": {group.name: group.max_workers}}]
    assert desired_after(ray, plan)[group.name] == group.max_workers
    with pytest.raises(k.UserError, match=r"spec.configuration .*outside \[.*change min_workers/max_workers"):
        k.scale_plan(ray, group.max_workers + 1, group.name)


# -- job submit -----------------------------------------------------------------------------------------------


def test_rayjob_manifest_selects_the_cluster_by_its_cluster_label() -> None:
    job = k.rayjob_manifest("train", "ns", "demo", "python a.py", runtime_env={"working_dir": "gcs://_ray_pkg_x.zip"},
                            entrypoint_num_cpus=1)
    assert job == {"apiVersion": "ray.k8s.io/v1alpha1", "kind": "RayJob",
                   "metadata": {"name": "train", "namespace": "ns"},
                   "spec": {"entrypoint": "python a.py", "clusterSelector": {"ray.k8s.io/cluster": "demo"},
                            "submissionMode": "HTTP", "runtimeEnv": {"working_dir": "gcs://_ray_pkg_x.zip"},
                            "entrypointNumCpus": 1}}
    with pytest.raises(k.UserError, match="DNS-1035"):
        k.rayjob_manifest("1job", "ns", "demo", "ls")
    with pytest.raises(k.UserError, match="at most 40"):
        k.rayjob_manifest("j" * 41, "ns", "demo", "ls")
    name = k.generated_job_name()
    k.check_job_name(name)
    assert name.startswith("rayjob-") and len(name) == 13


def test_the_working_dir_archive_is_deterministic_and_relative(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "main.py").write_text("print('hi')\n")
    (tmp_path / "pkg" / "util.py").write_text("X = 1\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.pyc").write_bytes(b"\0")
    first = k.package_directory(tmp_path)
    names = zipfile.ZipFile(io.BytesIO(first)).namelist()
    assert names == ["main.py", "pkg/util.py"]
    assert k.package_directory(tmp_path) == first
    uri = k.package_uri(first)
    assert uri.startswith("gcs://_ray_pkg_") and uri.endswith(".zip")
    (tmp_path / "main.py").write_text("print('changed')\n")
    assert k.package_uri(k.package_directory(tmp_path)) != uri
    with pytest.raises(k.UserError, match="not a directory"):
        k.package_directory(tmp_path / "main.py")


def test_uris_are_passed_through() -> None:
    assert k.is_uri("s3://bucket/code.zip") and k.is_uri("https://x/y.zip") and k.is_uri("gcs://_ray_pkg_a.zip")
    assert not k.is_uri("./code") and not k.is_uri("/abs/path") and not k.is_uri("C:dir")


# -- tables ---------------------------------------------------------------------------------------------------


def head_pod(cluster: str, phase: str = "Running", ready: bool = True, **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": f"{cluster}-head-abcde", "namespace": "ns",
                         "labels": {"ray.k8s.io/cluster": cluster, "ray.k8s.io/node-kind": "head"}, **meta},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_ray_table_rows() -> None:
    rays = [
        {"metadata": {"name": "a", "namespace": "ns", "creationTimestamp": ago(3 * 3600 + 60)},
         "status": {"desiredWorkers": 2, "worker": {"readyReplicas": 1},
                    "conditions": [{"type": "Ready", "status": "False"}]}},
        {"metadata": {"name": "b", "namespace": "ns", "creationTimestamp": ago(30)}},
    ]
    heads = k.head_pods_by_cluster([head_pod("a", ready=False), head_pod("z")])
    rows = k.ray_rows(rays, heads, {("ns", "a"): 3}, NOW, all_namespaces=False)
    assert rows == [["a", "2", "1", "a-head-abcde", "Running/NotReady", "False", "3", "3h1m"],
                    ["b", "-", "0", "-", "-", "Unknown", "-", "30s"]]
    table = k.format_table(k.RAY_HEADER, rows)
    lines = table.splitlines()
    assert lines[0].split("   ")[0] == "NAME" and "DESIRED WORKERS" in lines[0] and "RAY NODES" in lines[0]
    assert lines[1].index("a-head-abcde") == lines[0].index("HEAD POD")
    with_ns = k.ray_rows(rays[:1], heads, {}, NOW, all_namespaces=True)
    assert with_ns[0][0] == "ns" and with_ns[0][7] == "-"


def test_head_state_prefers_the_live_head_and_names_problems() -> None:
    old = head_pod("a", deletionTimestamp=ago(1))
    new = head_pod("a", phase="Pending", ready=False)
    new["metadata"]["name"] = "a-head-new"
    assert k.head_pods_by_cluster([old, new])[("ns", "a")]["metadata"]["name"] == "a-head-new"
    assert k.pod_state(old) == "Terminating"
    crash = head_pod("a", ready=False)
    crash["status"]["containerStatuses"] = [{"state": {"waiting": {"reason": "CrashLoopBackOff"}}}]
    assert k.pod_state(crash) == "CrashLoopBackOff"
    assert k.pod_state(None) == "-"


def test_alive_nodes_counts_alive_raylets_of_the_dashboard_summary() -> None:
    answer = {"result": True, "data": {"summary": [{"raylet": {"state": "ALIVE"}}, {"raylet": {"state": "DEAD"}},
                                                   {"raylet": {"state": "ALIVE"}}]}}
    assert k.alive_nodes(answer) == 2
    assert k.alive_nodes({"data": {}}) is None and k.alive_nodes(None) is None


def test_rayjob_table_rows() -> None:
    job = {"metadata": {"name": "j", "namespace": "ns", "creationTimestamp": ago(600)},
           "spec": {"submissionMode": "K8sJob"},
           "status": {"jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete", "rayClusterName": "demo",
                      "startTime": ago(590), "endTime": ago(5)}}
    assert k.rayjob_rows([job], NOW, False) == [["j", "SUCCEEDED", "Complete", "demo", "K8sJob", "9m50s", "5s",
                                                 "10m"]]
    assert k.rayjob_rows([{"metadata": {"name": "new", "namespace": "ns"}}], NOW, True) == [
        ["ns", "new", "-", "-", "-", "HTTP", "-", "-", "-"]]


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (119, "119s"), (125, "2m5s"), (600, "10m"),
                                               (3 * 3600 + 60, "3h1m"), (9 * 3600, "9h"), (50 * 3600, "2d2h"),
                                               (10 * 86400, "10d"), (800 * 86400, "2y")])
def test_human_age(seconds: float, text: str) -> None:
    assert k.human_age(seconds) == text


def test_only_logs_passes_flags_after_the_double_dash_to_kubectl(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    monkeypatch.setattr(k, "cmd_logs", lambda args: seen.append(args.kubectl_args) or 0)
    assert k.main(["logs", "demo", "-n", "x", "--", "--since=10m", "-v=6"]) == 0
    assert seen == [["--since=10m", "-v=6"]]
    with pytest.raises(SystemExit) as e:
        k.main(["scale", "demo", "--workers", "1", "--", "--since=10m"])
    assert e.value.code == 2


def test_a_submitter_job_is_finished_by_its_complete_or_failed_condition() -> None:
    assert k.submitter_finished({"status": {"conditions": [{"type": "Complete", "status": "True"}]}})
    assert k.submitter_finished({"status": {"conditions": [{"type": "Failed", "status": "True"}]}})
    assert not k.submitter_finished({"status": {"conditions": [{"type": "SuccessCriteriaMet", "status": "True"}]}})
    assert not k.submitter_finished({"status": {"active": 1}})
