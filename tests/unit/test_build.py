"""The pure builders: names, labels, ownership, Ray commands, the user's template, hashes, defaults."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from rayop.api.convert import effective_cluster
from rayop.autoscaler import autoscaler_role_rules, drain_bootstrap, drain_program
from rayop.build import (
    Owner,
    build_children,
    image_ray_version,
    launcher_pod_name,
    ray_start_args,
    stable_hash,
    with_replacements,
)
from rayop.defaults import DEFAULT_RAY_IMAGE, Options
from rayop.objects import ANNOTATION_REPLACEMENTS, LABEL_TEMPLATE_HASH
from tests.unit.test_plan_fixtures import PROGRAMS, UID, autoscaling, desired_for, ray, static

SAMPLES = sorted((Path(__file__).resolve().parents[2] / "manifests" / "samples").glob("*.yaml"))


def sample(path: Path) -> dict[str, Any]:
    obj = yaml.safe_load(path.read_text())
    obj["metadata"].setdefault("namespace", "default")
    obj["metadata"]["uid"] = UID
    return obj


def all_children(obj: dict[str, Any], options: Options | None = None) -> list[dict[str, Any]]:
    d = desired_for(obj, options)
    return [*map(dict, d.singletons()), dict(d.head.manifest), *(dict(w.manifest) for w in d.workers),
            d.launcher_pod("head-uid")]


def ray_container(pod: Any) -> dict[str, Any]:
    return pod["spec"]["containers"][0]


def script(pod: Any) -> str:
    return str(ray_container(pod)["args"][0])


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_every_child_carries_labels_and_a_controller_owner_reference(path: Path) -> None:
    obj = sample(path)
    name = obj["metadata"]["name"]
    for child in all_children(obj):
        labels = child["metadata"]["labels"]
        assert labels["ray.k8s.io/cluster"] == name
        assert labels["app.kubernetes.io/managed-by"] == "rayop"
        assert labels["ray.k8s.io/node-kind"] and labels["ray.k8s.io/group"]
        assert child["metadata"]["ownerReferences"] == [{
            "apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray", "name": name, "uid": UID, "controller": True,
            "blockOwnerDeletion": True}]
        assert child["metadata"]["namespace"] == obj["metadata"]["namespace"]
        json.dumps(child)  # plain JSON values only


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_child_names_follow_the_contract(path: Path) -> None:
    obj = sample(path)
    name = obj["metadata"]["name"]
    d = desired_for(obj)
    assert d.service["metadata"]["name"] == f"{name}-head"
    assert d.config_map["metadata"]["name"] == f"{name}-ray"
    assert {m["metadata"]["name"] for m in d.autoscaler} <= {f"{name}-autoscaler"}
    assert d.head.manifest["metadata"]["generateName"] == f"{name}-head-"
    for w in d.workers:
        assert w.manifest["metadata"]["generateName"] == f"{name}-{w.group}-"
    launcher = d.launcher_pod("uid-1")
    assert launcher["metadata"]["name"].startswith(f"{name}-launcher-") and len(launcher["metadata"]["name"]) <= 63


@pytest.mark.parametrize("path", [p for p in SAMPLES if p.stem.startswith("seed")], ids=lambda p: p.stem)
def test_seed_examples_run_as_written_with_the_default_image(path: Path) -> None:
    d = desired_for(sample(path))
    for pod in [d.head.manifest, *(w.manifest for w in d.workers)]:
        assert ray_container(pod)["image"] == DEFAULT_RAY_IMAGE
        assert ray_container(pod)["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}
    assert "--num-cpus=1" in script(d.head.manifest) and "--memory=2147483648" in script(d.head.manifest)


def test_user_labels_cannot_override_the_operators() -> None:
    template = {"metadata": {"labels": {"ray.k8s.io/cluster": "evil", "app.kubernetes.io/managed-by": "me",
                                        "ray.k8s.io/template-hash": "x", "team": "a"},
                             "annotations": {"note": "kept"}}}
    d = desired_for(ray(static(1, head=template, worker=template)))
    for gp in (d.head, d.workers[0]):
        labels = gp.manifest["metadata"]["labels"]
        assert labels["ray.k8s.io/cluster"] == "demo"
        assert labels["app.kubernetes.io/managed-by"] == "rayop"
        assert labels[LABEL_TEMPLATE_HASH] == gp.template_hash
        assert labels["team"] == "a"
        assert gp.manifest["metadata"]["annotations"] == {"note": "kept"}


@pytest.mark.parametrize(
    "spec, no_monitor",
    [(autoscaling(), True), (static(2), False)],
    ids=["autoscaling", "static"],
)
def test_head_command(spec: dict[str, Any], no_monitor: bool) -> None:
    d = desired_for(ray(spec))
    args = shlex.split(script(d.head.manifest).split("exec ", 1)[1])
    assert args[:4] == ["ray", "start", "--head", "--block"]
    for flag in ("--dashboard-host=0.0.0.0", "--port=6379", "--dashboard-port=8265", "--ray-client-server-port=10001",
                 "--metrics-export-port=8080", "--num-cpus=1"):
        assert flag in args
    assert ("--no-monitor" in args) is no_monitor
    e = env(ray_container(d.head.manifest))
    assert e["RAY_enable_autoscaler_v2"] == "0"
    assert e["RAY_CLOUD_INSTANCE_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert e["RAY_NODE_TYPE_NAME"] == "head"
    assert ray_container(d.head.manifest)["command"] == ["/bin/bash", "-lc", "--"]


def test_worker_command_joins_the_head_service() -> None:
    d = desired_for(ray(static(2)))
    args = shlex.split(script(d.workers[0].manifest).split("exec ", 1)[1])
    assert args[:4] == ["ray", "start", "--block", "--address=demo-head.ray.svc.cluster.local:6379"]
    e = env(ray_container(d.workers[0].manifest))
    assert e["RAY_NODE_TYPE_NAME"] == "worker"
    assert e["RAY_CLOUD_INSTANCE_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "RAY_enable_autoscaler_v2" not in e


@pytest.mark.parametrize(
    "limits, params, expected",
    [
        ({"cpu": "4", "memory": "8Gi"}, {}, ["--num-cpus=4", "--memory=8589934592"]),
        ({"cpu": "500m", "memory": "1G", "nvidia.com/gpu": 2}, {}, ["--num-cpus=1", "--num-gpus=2",
                                                                    "--memory=1000000000"]),
        ({"cpu": "4"}, {"num-cpus": "2", "resources": '{"tpu": 4}'}, ["--num-cpus=2", '--resources={"tpu":4}']),
    ],
    ids=["cpu-memory", "gpu-millicpu", "params-win"],
)
def test_ray_resources_come_from_container_limits(limits: dict[str, Any], params: dict[str, str],
                                                  expected: list[str]) -> None:
    worker = {"spec": {"containers": [{"name": "ray-worker", "resources": {"limits": limits}}]}}
    obj = ray(static(1, worker=worker, workerRayStartParams=params))
    model = effective_cluster(obj).cluster
    args = ray_start_args(model, model.worker_groups[0], Options())
    for flag in expected:
        assert flag in args
    assert sum(a.startswith("--num-cpus") for a in args) == 1
    assert sum(a.startswith("--resources") for a in args) <= 1


def test_users_template_is_respected() -> None:
    worker = {"spec": {
        "nodeSelector": {"pool": "ray"},
        "tolerations": [{"key": "gpu", "operator": "Exists"}],
        "volumes": [{"name": "data", "emptyDir": {}}],
        "containers": [
            {"name": "ray-worker", "image": "me/ray:2.60.0", "resources": {"limits": {"cpu": "2", "memory": "4Gi"}},
             "volumeMounts": [{"name": "data", "mountPath": "/data"}], "env": [{"name": "FOO", "value": "1"},
                                                                              {"name": "RAY_NODE_TYPE_NAME",
                                                                               "value": "x"}],
             "ports": [{"name": "serve", "containerPort": 8000}]},
            {"name": "logs", "image": "fluent/bit"},
        ]}}
    d = desired_for(ray(static(1, worker=worker)))
    spec = d.workers[0].manifest["spec"]
    assert spec["nodeSelector"] == {"pool": "ray"}
    assert spec["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert [c["name"] for c in spec["containers"]] == ["ray-worker", "logs"]
    c = spec["containers"][0]
    assert c["image"] == "me/ray:2.60.0"
    assert c["resources"] == {"limits": {"cpu": "2", "memory": "4Gi"}}
    assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"]
    assert env(c)["FOO"] == "1" and env(c)["RAY_NODE_TYPE_NAME"] == "worker"
    assert [p["name"] for p in c["ports"]] == ["serve", "metrics"]
    assert spec["automountServiceAccountToken"] is False
    # /dev/shm is added next to the user's volume.
    assert {"name": "shared-mem", "emptyDir": {"medium": "Memory"}} in spec["volumes"]


def test_a_users_dev_shm_is_not_mounted_twice() -> None:
    path = next(p for p in SAMPLES if p.stem == "autoscaling")
    d = desired_for(sample(path))
    c = ray_container(d.workers[0].manifest)
    assert [m["mountPath"] for m in c["volumeMounts"]].count("/dev/shm") == 1
    assert [v["name"] for v in d.workers[0].manifest["spec"]["volumes"]] == ["dshm"]


def test_a_users_command_is_kept_and_the_start_command_offered_in_env() -> None:
    worker = {"spec": {"containers": [{"name": "ray-worker", "command": ["sh", "-c", "my-start"]}]}}
    d = desired_for(ray(static(1, worker=worker)))
    c = ray_container(d.workers[0].manifest)
    assert c["command"] == ["sh", "-c", "my-start"] and "args" not in c
    assert "ray start --block" in env(c)["RAYOP_RAY_START_COMMAND"]


@pytest.mark.parametrize(
    "image, kind",
    [("rayproject/ray:2.60.0", "httpGet"), ("rayproject/ray:2.53.1-gpu", "httpGet"), ("rayproject/ray:2.9.0", "exec"),
     ("registry:5000/custom", "exec")],
    ids=["2.60", "2.53-gpu", "2.9", "unknown"],
)
def test_probes_use_rays_health_check(image: str, kind: str) -> None:
    d = desired_for(ray(static(1, image=image)))
    for gp in (d.head, d.workers[0]):
        c = ray_container(gp.manifest)
        assert kind in c["readinessProbe"] and kind in c["livenessProbe"]
    if kind == "exec":
        assert "gcs_healthz" in ray_container(d.head.manifest)["readinessProbe"]["exec"]["command"][2]
        assert "gcs_healthz" not in ray_container(d.workers[0].manifest)["readinessProbe"]["exec"]["command"][2]


def test_a_users_probe_is_kept_and_probes_can_be_turned_off() -> None:
    probe = {"tcpSocket": {"port": 6379}}
    head = {"spec": {"containers": [{"name": "ray-head", "readinessProbe": probe}]}}
    d = desired_for(ray(static(1, head=head)))
    assert ray_container(d.head.manifest)["readinessProbe"] == probe
    assert "livenessProbe" in ray_container(d.head.manifest)
    off = desired_for(ray(static(1)), Options(probes=False))
    assert "readinessProbe" not in ray_container(off.workers[0].manifest)


@pytest.mark.parametrize("enabled", [True, False], ids=["autoscaling", "static"])
def test_autoscaler_sidecar_rbac_and_service_account(enabled: bool) -> None:
    d = desired_for(ray(autoscaling() if enabled else static(2)))
    spec = d.head.manifest["spec"]
    names = [c["name"] for c in spec["containers"]]
    assert ("autoscaler" in names) is enabled
    assert bool(d.autoscaler) is enabled
    if enabled:
        sidecar = spec["containers"][names.index("autoscaler")]
        assert sidecar["image"] == ray_container(d.head.manifest)["image"]
        assert sidecar["command"] == ["python", "/etc/rayop/rayop_monitor.py", "--config", "/etc/rayop/autoscaler.yaml"]
        assert set(env(sidecar)) >= {"RAY_CLUSTER_NAME", "RAY_CLUSTER_NAMESPACE", "RAY_HEAD_POD_NAME", "PYTHONPATH"}
        mounts = {m["mountPath"]: m for m in sidecar["volumeMounts"]}
        assert mounts["/etc/rayop"]["readOnly"] is True and "/tmp/ray" in mounts
        assert "/tmp/ray" in {m["mountPath"] for m in ray_container(d.head.manifest)["volumeMounts"]}
        assert spec["serviceAccountName"] == "demo-autoscaler" and spec["automountServiceAccountToken"] is True
        sa, role, binding = d.autoscaler
        assert role["rules"] == autoscaler_role_rules("demo")
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "demo-autoscaler", "namespace": "ray"}]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": "demo-autoscaler"}
    else:
        assert "serviceAccountName" not in spec and spec["automountServiceAccountToken"] is False


def test_a_users_head_service_account_is_kept_and_bound() -> None:
    d = desired_for(ray(autoscaling(head={"spec": {"serviceAccountName": "mine"}})))
    assert d.head.manifest["spec"]["serviceAccountName"] == "mine"
    assert d.autoscaler[2]["subjects"][0]["name"] == "mine"


def test_head_service_is_headless_and_publishes_the_ray_ports() -> None:
    head = {"spec": {"containers": [{"name": "ray-head", "ports": [{"name": "serve", "containerPort": 8000}]}]}}
    d = desired_for(ray(static(1, head=head, headRayStartParams={"dashboard-port": "9000"})))
    spec = d.service["spec"]
    assert spec["clusterIP"] == "None" and spec["publishNotReadyAddresses"] is True
    assert spec["selector"] == {"ray.k8s.io/cluster": "demo", "ray.k8s.io/node-kind": "head",
                                "app.kubernetes.io/managed-by": "rayop"}
    assert {p["name"]: p["port"] for p in spec["ports"]} == {"serve": 8000, "gcs": 6379, "dashboard": 9000,
                                                             "client": 10001, "metrics": 8080}
    assert "--dashboard-port=9000" in script(d.head.manifest)


@pytest.mark.parametrize("configuration", [None, "cluster_name: x\nmax_workers: 2\n"], ids=["structured", "config"])
def test_config_map_data(configuration: str | None) -> None:
    spec = {"configuration": configuration} if configuration else static(1)
    d = desired_for(ray(spec))
    data = d.config_map["data"]
    assert set(data) == {*PROGRAMS, "autoscaler.yaml", *(["configuration.yaml"] if configuration else [])}
    assert yaml.safe_load(data["autoscaler.yaml"])["cluster_name"] == "demo"
    if configuration:
        assert data["configuration.yaml"] == configuration


def test_launcher_pod() -> None:
    d = desired_for(ray(autoscaling(initial=3)))
    pod = d.launcher_pod("head-1", attempt=2)
    assert pod["kind"] == "Pod" and pod["apiVersion"] == "v1"
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never" and spec["activeDeadlineSeconds"] == 900
    assert spec["automountServiceAccountToken"] is False
    c = spec["containers"][0]
    assert c["image"] == DEFAULT_RAY_IMAGE
    assert c["command"][:6] == ["python", "/etc/rayop/rayop_launcher.py", "--config", "/etc/rayop/autoscaler.yaml",
                                "--address", "demo-head.ray.svc.cluster.local:6379"]
    assert c["command"][c["command"].index("--expect-workers") + 1] == "3"
    assert {"name": "rayop-config", "mountPath": "/etc/rayop", "readOnly": True} in c["volumeMounts"]
    meta = pod["metadata"]
    assert meta["labels"]["ray.k8s.io/node-kind"] == "launcher"
    assert meta["annotations"] == {"ray.k8s.io/head-uid": "head-1", "ray.k8s.io/config-hash": d.config_hash,
                                   "ray.k8s.io/launch-attempt": "2"}
    assert meta["ownerReferences"][0]["kind"] == "Ray" and meta["ownerReferences"][0]["controller"] is True
    assert meta["name"] == d.launcher_name("head-1", 2) != d.launcher_name("head-1", 1)


def test_launcher_name_changes_per_head_config_and_attempt_and_fits_63_characters() -> None:
    a = launcher_pod_name("x", "head-1", "cfg-1")
    assert a != launcher_pod_name("x", "head-2", "cfg-1") != launcher_pod_name("x", "head-1", "cfg-2")
    assert a != launcher_pod_name("x", "head-1", "cfg-1", 1)
    assert a == launcher_pod_name("x", "head-1", "cfg-1", 0)
    long = launcher_pod_name("a" * 52, "h", "c")
    assert len(long) == 63 and long.startswith("a" * 45 + "-launcher-")


def test_template_hash_is_stable_and_tracks_only_the_groups_own_template() -> None:
    base = static(2, worker={"spec": {"containers": [{"name": "ray-worker", "image": "rayproject/ray:2.60.0"}]}})
    d1, d2 = desired_for(ray(base)), desired_for(ray(copy.deepcopy(base)))
    assert d1.template_hashes() == d2.template_hashes()
    scaled = desired_for(ray({**base, "initialWorkers": 5, "maxWorkers": 9, "desiredWorkers": {"worker": 4}}))
    assert scaled.template_hashes() == d1.template_hashes()
    changed = copy.deepcopy(base)
    changed["worker"]["spec"]["containers"][0]["image"] = "rayproject/ray:2.61.0"
    d3 = desired_for(ray(changed))
    assert d3.head.template_hash == d1.head.template_hash
    assert d3.workers[0].template_hash != d1.workers[0].template_hash
    other_image = desired_for(ray(static(2)), Options(image="rayproject/ray:2.61.0"))
    assert other_image.workers[0].template_hash != desired_for(ray(static(2))).workers[0].template_hash


def test_builders_never_modify_the_model_or_the_ray() -> None:
    obj = ray(autoscaling(worker={"spec": {"containers": [{"name": "w", "env": [{"name": "A", "value": "1"}]}]}}))
    before = copy.deepcopy(obj)
    model = effective_cluster(obj).cluster
    model_before = copy.deepcopy(model)
    d = build_children(obj, model, Options(), autoscaler_config={"a": 1}, programs=PROGRAMS)
    d.launcher_pod("x")
    assert obj == before and model == model_before
    assert model.worker_groups[0].template is not None
    assert model.worker_groups[0].template["spec"]["containers"][0]["env"] == [{"name": "A", "value": "1"}]


def test_with_replacements_marks_a_copy() -> None:
    d = desired_for(ray(static(1)))
    marked = with_replacements(d.workers[0].manifest, 3)
    assert marked["metadata"]["annotations"][ANNOTATION_REPLACEMENTS] == "3"
    assert "annotations" not in d.workers[0].manifest["metadata"]


def test_render_owner_without_uid_has_no_owner_reference() -> None:
    assert Owner("a", "b").references() == []
    assert Owner.of({"metadata": {"name": "a"}}).namespace == "default"


@pytest.mark.parametrize(
    "image, version",
    [("rayproject/ray:2.60.0", (2, 60)), ("rayproject/ray:2.60.0-py311-gpu", (2, 60)), ("ray:nightly", None),
     ("localhost:5000/ray", None), ("rayproject/ray", None)],
    ids=["plain", "suffix", "nightly", "registry-port", "untagged"],
)
def test_image_ray_version(image: str, version: tuple[int, int] | None) -> None:
    assert image_ray_version(image) == version


def test_stable_hash_ignores_key_order() -> None:
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def unpacked(bootstrap: str) -> str:
    import base64
    import zlib

    packed = bootstrap.split("b64decode('", 1)[1].split("')", 1)[0]
    return zlib.decompress(base64.b64decode(packed)).decode()


def test_a_worker_carries_the_drain_program_once_compressed_and_its_hook_runs_it(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    d = desired_for(ray(static(1)))
    pod = d.workers[0].manifest
    [c] = [c for c in pod["spec"]["containers"] if c["name"] == "ray-worker"]
    program = env(c)["RAYOP_DRAIN_PROGRAM"]
    assert program == drain_bootstrap()
    assert unpacked(program) == drain_program()  # exactly the program, nothing lost in the packing
    assert json.dumps(pod).count(program) == 1  # once: the hook and the restart guard read it from the environment
    assert len(json.dumps(pod)) < 9_000  # it was 28 KB as text, then 13 KB packed and carried twice
    ran = subprocess.run([sys.executable, "-c", program, "--help"], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0 and "Drain this pod's Ray node" in ran.stdout, ran.stderr
    # The hook, as the kubelet runs it (the command, in the container's environment), with this machine's Python as
    # `python`: the program gets the hook's arguments (`--help` added after them shows it parsed them all).
    hook = c["lifecycle"]["preStop"]["exec"]["command"]
    assert hook[:2] == ["/bin/sh", "-c"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    environment = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RAYOP_DRAIN_PROGRAM": program}
    ran = subprocess.run([*hook[:2], hook[2] + " --help"], capture_output=True, text=True, timeout=60,
                         env=environment)
    assert ran.returncode == 0 and "Drain this pod's Ray node" in ran.stdout, ran.stderr
    argv = shlex.split(hook[2])
    assert argv[:3] == ["exec", "python", "-c"] and argv[3] == "$RAYOP_DRAIN_PROGRAM"
    assert argv[4:] == ["--address", "demo-head.ray.svc.cluster.local:6379", "--deadline", "300"]


def test_a_worker_restarting_in_its_pod_asks_the_restart_guard_and_a_drained_one_stays_idle(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import time

    from rayop.build import DRAIN_MARKER, STARTED_MARKER
    from rayop.inpod import rayop_drain

    assert rayop_drain.MARKER == DRAIN_MARKER  # the guard writes the marker the script reads
    d = desired_for(ray(static(1)))
    text = script(d.workers[0].manifest)
    guard = text.split(" || true;", 1)[0].split('; "$py" ', 1)[1]
    argv = shlex.split(guard)
    assert argv[0] == "-c" and argv[-1] == "--on-restart"
    assert argv[argv.index("--address") + 1] == "demo-head.ray.svc.cluster.local:6379"
    assert argv[1] == "$RAYOP_DRAIN_PROGRAM"  # the program in the container's environment
    assert "def on_restart(" in unpacked(env(ray_container(d.workers[0].manifest))["RAYOP_DRAIN_PROGRAM"])
    # The script itself, with the pod's /dev/shm in a temporary folder, `ray start` replaced by an echo and a
    # stand-in `python` (next to a `ray`) that says it was asked and writes the marker when told to (as the guard
    # does for a drain), and says so when it runs the wait for the head's GCS instead.
    shm = tmp_path / "shm"
    shm.mkdir()
    text = text.replace(DRAIN_MARKER, str(shm / "drained")).replace(STARTED_MARKER, str(shm / "started"))
    text = text.rsplit("exec ", 1)[0] + "echo RAY STARTS"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(
        '#!/bin/sh\ncase "$*" in *--on-restart) ;; *) eval "echo GCS WAIT \\$$#"; exit 0;; esac\n'
        '[ "$2" = "$RAYOP_DRAIN_PROGRAM" ] || { echo GUARD GOT ANOTHER PROGRAM; exit 3; }\n'
        f'echo GUARD ASKED\n[ -n "$DRAINED" ] && touch {shm / "drained"}\nexit 3\n')
    (bin_dir / "python").chmod(0o755)
    (bin_dir / "ray").write_text("#!/bin/sh\nexit 0\n")  # the guard runs with the Python next to `ray`
    (bin_dir / "ray").chmod(0o755)

    def start(drained: bool = False) -> str:
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DRAINED": "1" if drained else "",
               "RAYOP_DRAIN_PROGRAM": "the drain program"}
        out = tmp_path / "out"
        with out.open("w") as f:  # a file, not a pipe: the idle loop's `sleep` outlives the shell
            proc = subprocess.Popen(["/bin/bash", "-c", text], stdout=f, env=env, start_new_session=True)
            deadline = time.monotonic() + 30
            while proc.poll() is None and "drained" not in out.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            if proc.poll() is None:  # idles: SIGTERM ends it at once, with status 0
                time.sleep(0.2)
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=10) == 0
                os.killpg(proc.pid, signal.SIGKILL)  # its sleep
        return out.read_text()

    wait = "GCS WAIT demo-head.ray.svc.cluster.local:6379\n"
    assert start() == wait + "RAY STARTS\n"  # the first start in the pod: no question asked
    assert (shm / "started").exists()
    assert start() == "GUARD ASKED\n" + wait + "RAY STARTS\n"  # a restart after a crash: asked, Ray starts again
    assert start(drained=True) == "GUARD ASKED\nthis pod was drained: Ray is not started again\n"
    assert start() == "this pod was drained: Ray is not started again\n"  # the marker holds: not even asked


def test_a_worker_waits_for_the_heads_gcs_before_ray_start_and_sigterm_ends_the_wait_at_once() -> None:
    import signal
    import socket
    import subprocess
    import time

    from rayop.build import gcs_wait_script

    d = desired_for(ray(static(1)))
    text = script(d.workers[0].manifest)
    assert gcs_wait_script("demo-head.ray.svc.cluster.local:6379") + " && exec ray start" in text
    assert "for the GCS of the head" not in script(d.head.manifest), "the head waits for nobody"
    # The wait itself (the real one, with this machine's Python): a closed port, then a listener.
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    started = time.monotonic()
    proc = subprocess.Popen(["/bin/bash", "-c", gcs_wait_script(f"127.0.0.1:{port}") + " && echo RAY STARTS"],
                            stdout=subprocess.PIPE, text=True)
    time.sleep(2.0)
    assert proc.poll() is None, "it waits while nothing listens"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        out = proc.communicate(timeout=30)[0].splitlines()
    assert proc.returncode == 0 and out[-1] == "RAY STARTS" and time.monotonic() - started >= 2.0
    line = json.loads(out[0])
    assert line["address"] == f"127.0.0.1:{port}" and "refused" in line["error"]
    # SIGTERM while it waits (a pod deleted before its head came up): the shell ends at once, its Python with it.
    proc = subprocess.Popen(["/bin/bash", "-c", gcs_wait_script("head.invalid:6379") + " && echo RAY STARTS"],
                            stdout=subprocess.PIPE, text=True)
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=5)[0]
    assert proc.returncode == 143 and "RAY STARTS" not in out
    deadline = time.monotonic() + 10
    while subprocess.run(["pgrep", "-f", "head.invalid:6379"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "the wait's Python outlived its shell"
        time.sleep(0.2)


def test_the_head_and_a_plasma_directory_worker_get_no_restart_guard() -> None:
    d = desired_for(ray(static(1, workerRayStartParams={"plasma-directory": "/data"})))
    assert "--on-restart" not in script(d.workers[0].manifest)
    assert "--on-restart" not in script(d.head.manifest)
