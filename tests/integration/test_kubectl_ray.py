"""`kubectl ray` run by the real `kubectl` (the venv's, with the venv's bin on PATH so it finds the `kubectl-ray`
console script) against the real API server, with the operator running (sim mode): get, create cluster, scale,
logs, job submit/get/logs/stop, and the errors a user sees."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from rayop.runtime.kube import ApiError, KubeClient
from tests.integration.test_day_two import start_operator, stop_operator
from tests.integration.test_reconcile import live, pods, wait_ready, worker_count
from tests.support.cluster import REPO, LocalCluster, wait_until
from tests.support.operator import OperatorProcess, install_rayjob_crd, load_sample, rays_path

BIN = REPO / ".venv" / "bin"
KUBECTL = BIN / "kubectl"


def rayjobs_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/ray.k8s.io/v1alpha1/namespaces/{namespace}/rayjobs"
    return f"{base}/{name}" if name else base


@pytest.fixture(scope="module")
def crds(ray_crd: None, cluster: LocalCluster) -> None:
    install_rayjob_crd(cluster.client())


@pytest.fixture
def operator(cluster: LocalCluster, namespace: str, crds: None, tmp_path: Path) -> Iterator[OperatorProcess]:
    op = start_operator(cluster, [namespace], tmp_path / "operator.log")
    yield op
    stop_operator(op)


class Plugin:
    """Runs `kubectl ray ...` as a user's shell would: the venv's kubectl, the venv's bin on PATH."""

    def __init__(self, cluster: LocalCluster):
        self.env = dict(os.environ, KUBECONFIG=cluster.kubeconfig,
                        PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
        self.env.pop("KUBECTL", None)

    def __call__(self, *args: str, ok: bool | None = True, env: dict[str, str] | None = None,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(KUBECTL), "ray", *args], env={**self.env, **(env or {})}, capture_output=True,
                                text=True, timeout=timeout)
        assert "Traceback" not in result.stderr, result.stderr
        if ok:
            assert result.returncode == 0, (args, result.stdout, result.stderr)
        elif ok is False:
            assert result.returncode != 0, (args, result.stdout, result.stderr)
        return result


@pytest.fixture
def kray(cluster: LocalCluster) -> Plugin:
    assert (BIN / "kubectl-ray").exists(), "kubectl-ray is not installed: run make venv (setup.cfg console_scripts)"
    return Plugin(cluster)


def table(text: str) -> list[dict[str, str]]:
    """The rows of a `kubectl ray get` table by column name (columns are three or more spaces apart)."""
    lines = text.splitlines()
    header = lines[0]
    starts = [m.start() for m in re.finditer(r"\S+(?: \S+)*", header)]
    bounds = list(zip(starts, starts[1:] + [10_000]))
    return [{header[a:b].strip(): line[a:b].strip() for a, b in bounds} for line in lines[1:]]


def test_kubectl_finds_the_plugin(kray: Plugin) -> None:
    listed = subprocess.run([str(KUBECTL), "plugin", "list"], env=kray.env, capture_output=True, text=True)
    assert str(BIN / "kubectl-ray") in listed.stdout, listed
    helped = kray("--help")
    for command in ("get", "create", "scale", "logs", "job"):
        assert command in helped.stdout
    for argv in (["get"], ["create", "cluster"], ["scale"], ["logs"], ["job", "submit"], ["job", "logs"],
                 ["job", "stop"], ["job", "get"]):
        assert "usage: kubectl ray" in kray(*argv, "--help").stdout, argv


def test_create_get_and_the_namespace_from_the_context(kray: Plugin, kube: KubeClient, namespace: str,
                                                      operator: OperatorProcess, cluster: LocalCluster,
                                                      tmp_path: Path) -> None:
    dry = kray("create", "cluster", "demo", "--workers", "2", "-n", namespace, "--dry-run")
    manifest = yaml.safe_load(dry.stdout)
    with pytest.raises(ApiError) as e:
        kube.get(rays_path(namespace, "demo"))
    assert e.value.not_found  # the dry run created nothing

    created = kray("create", "cluster", "demo", "--workers", "2", "-n", namespace)
    assert "ray.ray.k8s.io/demo created" in created.stdout
    stored = kube.get(rays_path(namespace, "demo"))
    assert stored["spec"] == manifest["spec"]
    assert stored["spec"]["image"] == load_sample("static.yaml", namespace)["spec"]["image"]
    ready = wait_ready(kube, namespace, "demo")
    assert worker_count(kube, namespace, "demo") == 2

    again = kray("create", "cluster", "demo", "--workers", "1", "-n", namespace, ok=False)
    assert f"a Ray named 'demo' already exists in namespace {namespace}" in again.stderr

    kube.create(rays_path(namespace), load_sample("seed-structured.yaml", namespace))  # ray-sample
    wait_ready(kube, namespace, "ray-sample")
    rows = table(kray("get", "-n", namespace).stdout)
    assert [r["NAME"] for r in rows] == ["demo", "ray-sample"]
    demo = rows[0]
    assert (demo["DESIRED WORKERS"], demo["READY WORKERS"], demo["READY"]) == ("2", "2", "True"), demo
    head = wait_ready(kube, namespace, "demo")["status"]["headPodName"]
    assert (demo["HEAD POD"], demo["HEAD STATE"]) == (head, "Running"), demo
    # Sim mode: the pods' IPs lead nowhere, so the dashboard does not answer and the column stays `-`.
    assert demo["RAY NODES"] == "-" and demo["AGE"].endswith(("s", "m")), demo
    assert ready["status"]["desiredWorkers"] == 2

    one = table(kray("get", "cluster", "demo", "-n", namespace).stdout)
    assert [r["NAME"] for r in one] == ["demo"]
    everywhere = table(kray("get", "-A").stdout)
    assert {"NAMESPACE": namespace, "NAME": "demo"}.items() <= next(
        r for r in everywhere if r["NAME"] == "demo" and r["NAMESPACE"] == namespace).items()

    missing = kray("get", "cluster", "nope", "-n", namespace, ok=False)
    assert missing.returncode == 1
    assert f"error: no Ray named 'nope' in namespace {namespace}" in missing.stderr

    # No -n: the namespace of the kubeconfig's context (current, or the one --context names), as kubectl does.
    config = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    base = config["contexts"][0]
    config["contexts"] = [{"name": "here", "context": {**base["context"], "namespace": namespace}},
                          {"name": "elsewhere", "context": {**base["context"], "namespace": "kube-system"}}]
    config["current-context"] = "elsewhere"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    listed = kray("get", "--kubeconfig", str(kubeconfig), "--context", "here")
    assert [r["NAME"] for r in table(listed.stdout)] == ["demo", "ray-sample"]
    elsewhere = kray("get", env={"KUBECONFIG": str(kubeconfig)})
    assert "No Rays found in namespace kube-system" in elsewhere.stderr
    bad_context = kray("get", "--kubeconfig", str(kubeconfig), "--context", "nowhere", ok=False)
    assert bad_context.stderr.startswith("error: cannot load the kubeconfig"), bad_context.stderr


def test_no_api_server_is_an_error_saying_what_to_check(kray: Plugin, cluster: LocalCluster,
                                                        tmp_path: Path) -> None:
    config = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    down = kray("get", "--kubeconfig", str(kubeconfig), ok=False)
    assert down.returncode == 1
    assert down.stderr.startswith("error: cannot reach the Kubernetes API server") and "--kubeconfig" in down.stderr


def test_scale_each_form(kray: Plugin, kube: KubeClient, namespace: str, operator: OperatorProcess) -> None:
    kray("create", "cluster", "demo", "--workers", "1", "-n", namespace)
    wait_ready(kube, namespace, "demo")
    scaled = kray("scale", "demo", "--workers", "3", "-n", namespace)
    assert "group worker to 3 workers" in scaled.stdout
    spec = kube.get(rays_path(namespace, "demo"))["spec"]
    assert spec["desiredWorkers"] == {"worker": 3} and spec["maxWorkers"] == 3
    wait_until(lambda: worker_count(kube, namespace, "demo") == 3, 60, message="3 workers")
    assert wait_ready(kube, namespace, "demo")["status"]["desiredWorkers"] == 3
    kray("scale", "demo", "--workers", "0", "-n", namespace)
    wait_until(lambda: worker_count(kube, namespace, "demo") == 0, 90, message="no workers")

    # A worker group of its own.
    kray("create", "cluster", "grouped", "--workers", "1", "--worker-group", "cpu", "-n", namespace)
    wait_ready(kube, namespace, "grouped")
    kray("scale", "grouped", "--workers", "2", "--group", "cpu", "-n", namespace)
    group = kube.get(rays_path(namespace, "grouped"))["spec"]["workerGroups"][0]
    assert (group["name"], group["maxWorkers"]) == ("cpu", 2)
    wait_until(lambda: worker_count(kube, namespace, "grouped") == 2, 60, message="2 workers in group cpu")
    unknown = kray("scale", "grouped", "--workers", "2", "--group", "gpu", "-n", namespace, ok=False)
    assert "no worker group 'gpu'; its groups: cpu" in unknown.stderr

    # Autoscaled: refused, nothing changed.
    kube.create(rays_path(namespace), load_sample("seed-structured.yaml", namespace))
    before = kube.get(rays_path(namespace, "ray-sample"))
    refused = kray("scale", "ray-sample", "--workers", "2", "-n", namespace, ok=False)
    assert "is autoscaled" in refused.stderr and "autoScalingMode: disabled" in refused.stderr
    assert kube.get(rays_path(namespace, "ray-sample"))["spec"] == before["spec"]

    # Configuration form: desiredWorkers within the configuration's bounds.
    legacy = load_sample("legacy-configuration.yaml", namespace)
    legacy["spec"]["configuration"] = legacy["spec"]["configuration"].replace("autoscaling_mode: default",
                                                                              "autoscaling_mode: disabled")
    kube.create(rays_path(namespace), legacy)
    kray("scale", "legacy", "--workers", "3", "-n", namespace)
    assert kube.get(rays_path(namespace, "legacy"))["spec"]["desiredWorkers"] == {"worker": 3}
    wait_until(lambda: worker_count(kube, namespace, "legacy") == 3, 60, message="3 legacy workers")
    beyond = kray("scale", "legacy", "--workers", "9", "-n", namespace, ok=False)
    assert "spec.configuration" in beyond.stderr and "outside [1, 4]" in beyond.stderr

    missing = kray("scale", "nope", "--workers", "1", "-n", namespace, ok=False)
    assert "no Ray named 'nope'" in missing.stderr


def test_logs_asks_kubectl_for_the_ray_s_own_pods(kray: Plugin, kube: KubeClient, namespace: str,
                                                  operator: OperatorProcess) -> None:
    kray("create", "cluster", "demo", "--workers", "2", "-n", namespace)
    kube.create(rays_path(namespace), load_sample("seed-structured.yaml", namespace))  # autoscaled: a sidecar
    wait_ready(kube, namespace, "demo")
    wait_ready(kube, namespace, "ray-sample")
    head = live(pods(kube, namespace, "demo", "head"))[0]["metadata"]["name"]
    workers = sorted(p["metadata"]["name"] for p in live(pods(kube, namespace, "demo", "worker")))
    assert len(workers) == 2

    def asked(*argv: str) -> set[str]:
        """The pod logs kubectl requested, as namespace/pod/container, from its own request log (-v=6, passed
        through after --). Sim mode has no kubelet, so the requests fail; which ones were made is the point."""
        result = kray("logs", *argv, "-n", namespace, "--", "-v=6", ok=None)
        out = set()
        for url in re.findall(r'url="([^"]+)"', result.stderr):
            parsed = urllib.parse.urlparse(url)
            found = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)/log", parsed.path)
            if found:
                query = urllib.parse.parse_qs(parsed.query)
                out.add(f"{found[1]}/{found[2]}/{query['container'][0]}")
                assert query.get("tailLines") == (["5"] if "--tail" in argv else None), url
        return out

    assert asked("demo") == {f"{namespace}/{head}/ray-head"} | {f"{namespace}/{w}/ray-worker" for w in workers}
    assert asked("demo", "--node-kind", "head") == {f"{namespace}/{head}/ray-head"}
    assert asked("demo", "--node-kind", "worker", "--tail", "5") == {f"{namespace}/{w}/ray-worker" for w in workers}
    sample_head = live(pods(kube, namespace, "ray-sample", "head"))[0]["metadata"]["name"]
    assert asked("ray-sample", "--node-kind", "head", "-c", "autoscaler") == {f"{namespace}/{sample_head}/autoscaler"}
    missing = kray("logs", "nope", "-n", namespace, ok=False)
    assert "no Ray named 'nope'" in missing.stderr


def test_job_submit_runs_on_the_named_ray(kray: Plugin, kube: KubeClient, namespace: str,
                                          operator: OperatorProcess, tmp_path: Path) -> None:
    kray("create", "cluster", "demo", "--workers", "1", "-n", namespace)
    kray("create", "cluster", "other", "--workers", "1", "-n", namespace)
    wait_ready(kube, namespace, "demo")

    submitted = kray("job", "submit", "--cluster", "demo", "--name", "hello", "-n", namespace, "--",
                     "python", "-c", "print('hello world')")
    assert "rayjob.ray.k8s.io/hello created on Ray demo" in submitted.stdout
    job = kube.get(rayjobs_path(namespace, "hello"))
    assert job["spec"]["entrypoint"] == "python -c 'print('\"'\"'hello world'\"'\"')'"
    assert job["spec"]["clusterSelector"] == {"ray.k8s.io/cluster": "demo"}
    assert kube.get(rays_path(namespace, "demo"))["metadata"]["labels"]["ray.k8s.io/cluster"] == "demo"
    assert "labels" not in kube.get(rays_path(namespace, "other"))["metadata"]
    # The operator's RayJob controller picks exactly that Ray (sim mode: its dashboard never answers).
    status = wait_until(lambda: (s := kube.get(rayjobs_path(namespace, "hello")).get("status") or {})
                        and s.get("rayClusterName") and s, 60, message="the RayJob on its Ray")
    assert status["rayClusterName"] == "demo", status

    # --wait with a timeout: sim mode's dashboards never answer, so the job never finishes; it is left running.
    waited = kray("job", "submit", "--cluster", "demo", "--name", "waits", "--wait", "--timeout", "3", "-n",
                  namespace, "--", "ls", ok=False)
    assert "RayJob waits did not finish within 3 s; it keeps running" in waited.stderr, waited.stderr
    assert "RayJob waits: Initializing" in waited.stderr or "RayJob waits: Running" in waited.stderr
    kube.delete(rayjobs_path(namespace, "waits"))
    wait_until(lambda: not [j for j in kube.get(rayjobs_path(namespace))["items"] if j["metadata"]["name"] == "waits"],
               30, message="the RayJob waits deleted")

    rows = table(kray("job", "get", "-n", namespace).stdout)
    assert [(r["NAME"], r["CLUSTER"], r["MODE"]) for r in rows] == [("hello", "demo", "HTTP")]
    logs = kray("job", "logs", "hello", "-n", namespace, ok=False)
    assert logs.stderr.startswith("error: ") and "hello" in logs.stderr

    stopped = kray("job", "stop", "hello", "-n", namespace)
    assert "stopped" in stopped.stdout
    assert kube.get(rayjobs_path(namespace, "hello"))["spec"]["suspend"] is True
    wait_until(lambda: (kube.get(rayjobs_path(namespace, "hello")).get("status") or {}).get(
        "jobDeploymentStatus") == "Suspended", 30, message="the RayJob suspended")
    assert "stopped already" in kray("job", "stop", "hello", "-n", namespace).stdout

    # A generated name; K8sJob mode; a URI working_dir goes to Ray as given.
    kray("job", "submit", "--cluster", "demo", "-n", namespace, "--submission-mode", "K8sJob",
         "--working-dir", "https://example.com/code.zip", "--", "python main.py && echo done")
    generated = [j for j in kube.get(rayjobs_path(namespace))["items"] if j["metadata"]["name"] != "hello"]
    assert len(generated) == 1 and generated[0]["metadata"]["name"].startswith("rayjob-")
    assert generated[0]["spec"]["entrypoint"] == "python main.py && echo done"
    assert generated[0]["spec"]["submissionMode"] == "K8sJob"
    assert generated[0]["spec"]["runtimeEnv"] == {"working_dir": "https://example.com/code.zip"}

    # A local working dir must be uploaded through the dashboard, which does not answer in sim mode: an error
    # naming what to do, and no RayJob.
    (tmp_path / "main.py").write_text("print('hi')\n")
    upload = kray("job", "submit", "--cluster", "demo", "--name", "shipped", "--working-dir", str(tmp_path),
                  "-n", namespace, "--", "python", "main.py", ok=False)
    assert "cannot upload --working-dir" in upload.stderr and "s3://" in upload.stderr, upload.stderr
    with pytest.raises(ApiError) as e:
        kube.get(rayjobs_path(namespace, "shipped"))
    assert e.value.not_found

    # Errors: no such Ray; a second Ray carrying the label (the selector would be ambiguous); a bad name.
    assert "no Ray named 'nope'" in kray("job", "submit", "--cluster", "nope", "-n", namespace, "--", "ls",
                                         ok=False).stderr
    kube.patch(rays_path(namespace, "other"), {"metadata": {"labels": {"ray.k8s.io/cluster": "demo"}}})
    ambiguous = kray("job", "submit", "--cluster", "demo", "-n", namespace, "--", "ls", ok=False)
    assert "other also carry the label ray.k8s.io/cluster=demo" in ambiguous.stderr
    bad = kray("job", "submit", "--cluster", "demo", "--name", "Bad", "-n", namespace, "--", "ls", ok=False)
    assert bad.returncode == 2 and "DNS-1035" in bad.stderr
    assert len(kube.get(rayjobs_path(namespace))["items"]) == 2


def test_plugin_runs_as_a_module_too(kray: Plugin) -> None:
    """The console script and `python -m rayop.kubectl_ray` are the same program."""
    out = subprocess.run([sys.executable, "-m", "rayop.kubectl_ray", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: kubectl ray" in out.stdout
