"""End to end, `kubectl ray` with real Ray: the operator deployed from manifests/ into a process-mode control plane
of the test's own (the fixtures of test_rayjob_process_mode), the plugin run by the real `kubectl`.

Proves:
- the manifest `kubectl ray create cluster --dry-run` prints makes a real Ray cluster (a head and one worker);
- `kubectl ray get` shows the Ray nodes its dashboard reports alive (2), through the API server's pod proxy;
- `kubectl ray job submit --working-dir DIR --wait` uploads the folder to the Ray's GCS through the dashboard, the
  program runs in it (it imports a module of its own from it), finishes, and its output is printed; `job logs` and
  `job get` show it too; the same in K8sJob mode, where the output comes from the submitter Job's log;
- `kubectl ray job stop` stops a running Ray job (Ray reports it STOPPED) and the RayJob is kept, Suspended;
- `kubectl ray logs` shows the real logs of the head's Ray container.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from rayop.runtime.kube import KubeClient
from tests.e2e.test_ray_process_mode import SMALL, _get, kube, pm, wait_ready  # noqa: F401 (shared fixtures)
from tests.e2e.test_rayjob_process_mode import (  # noqa: F401
    PYTHON,
    jobs_path,
    operator_pod,
    ray_jobs,
    record,
    wait_job,
)
from tests.support.cluster import REPO, PrivateCluster, delete_namespace, process_mode_unavailable, wait_until

BIN = REPO / ".venv" / "bin"
KUBECTL = BIN / "kubectl"
UNAVAILABLE = process_mode_unavailable()
pytestmark = [pytest.mark.e2e, pytest.mark.slow,
              pytest.mark.skipif(UNAVAILABLE is not None, reason=f"process mode unavailable: {UNAVAILABLE}")]

MAIN = """
import ray
import helper

ray.init()
alive = [n for n in ray.nodes() if n["Alive"]]
print("kubectl-ray e2e:", helper.GREETING, "from", len(alive), "nodes")
"""


@pytest.fixture
def namespace(kube: KubeClient, operator_pod: str) -> Iterator[str]:  # noqa: F811
    name = f"e2e-kr-{uuid.uuid4().hex[:6]}"
    kube.create("/api/v1/namespaces", {"metadata": {"name": name}})
    wait_until(lambda: _get(kube, f"/api/v1/namespaces/{name}/serviceaccounts/default"), 60,
               message="the default ServiceAccount")
    wait_until(lambda: _get(kube, f"/api/v1/namespaces/{name}/configmaps/kube-root-ca.crt"), 60,
               message="kube-root-ca.crt")
    yield name
    delete_namespace(kube, name)


def kray(pm: PrivateCluster, *args: str, ok: bool = True,  # noqa: F811 (pm: the fixture's value)
         timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KUBECONFIG=pm.kubeconfig, PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
    result = subprocess.run([str(KUBECTL), "ray", *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in result.stderr, result.stderr
    assert (result.returncode == 0) == ok, (args, result.returncode, result.stdout[-3000:], result.stderr[-3000:])
    return result


def test_kubectl_ray_submits_a_job_with_its_working_dir_and_shows_its_output(
        pm: PrivateCluster, kube: KubeClient, namespace: str, tmp_path: Path) -> None:  # noqa: F811
    manifest = yaml.safe_load(kray(pm, "create", "cluster", "demo", "--workers", "1", "-n", namespace,
                                   "--dry-run").stdout)
    # Small Ray nodes for the 2-core machine (the object store would otherwise take 30 % of its memory per node).
    manifest["spec"]["headRayStartParams"] = dict(SMALL)
    manifest["spec"]["workerRayStartParams"] = dict(SMALL)
    pm.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
    t0 = time.monotonic()
    wait_ready(kube, namespace, "demo")
    record("kubectl ray: cluster Ready", time.monotonic() - t0)

    def nodes() -> str | None:
        out = kray(pm, "get", "demo", "-n", namespace).stdout.splitlines()
        value = out[1].split()[-2]
        return value if value == "2" else None

    wait_until(nodes, 60, 1, message="kubectl ray get: 2 alive Ray nodes")

    work = tmp_path / "work"
    work.mkdir()
    (work / "main.py").write_text(MAIN)
    (work / "helper.py").write_text('GREETING = "hello from the working dir"\n')
    t0 = time.monotonic()
    submitted = kray(pm, "job", "submit", "--cluster", "demo", "--name", "shipped", "--working-dir", str(work),
                     "--wait", "--timeout", "300", "-n", namespace, "--", PYTHON, "main.py")
    record("kubectl ray job submit --wait (HTTP)", time.monotonic() - t0)
    line = "kubectl-ray e2e: hello from the working dir from 2 nodes"
    assert line in submitted.stdout, submitted.stdout + submitted.stderr
    assert "uploaded" in submitted.stderr and "Complete" in submitted.stderr
    job = wait_job(kube, namespace, "shipped", "Complete")
    assert job["status"]["jobStatus"] == "SUCCEEDED"
    uri = job["spec"]["runtimeEnv"]["working_dir"]
    assert uri.startswith("gcs://_ray_pkg_") and uri.endswith(".zip")
    (ray_job,) = [r for r in ray_jobs(pm, kube, namespace, "demo") if r["submission_id"] == job["status"][
        "submissionId"]]
    assert ray_job["status"] == "SUCCEEDED"
    assert line in kray(pm, "job", "logs", "shipped", "-n", namespace).stdout
    got = kray(pm, "job", "get", "shipped", "-n", namespace).stdout.splitlines()
    assert got[1].split()[:4] == ["shipped", "SUCCEEDED", "Complete", "demo"], got

    # K8sJob mode: the same archive (already in the GCS, not uploaded again); the output from the submitter's log.
    t0 = time.monotonic()
    k8s = kray(pm, "job", "submit", "--cluster", "demo", "--name", "viajob", "--working-dir", str(work),
               "--submission-mode", "K8sJob", "--wait", "--timeout", "300", "-n", namespace, "--", PYTHON, "main.py")
    record("kubectl ray job submit --wait (K8sJob)", time.monotonic() - t0)
    assert line in k8s.stdout, k8s.stdout + k8s.stderr
    assert "uploaded" not in k8s.stderr
    assert wait_job(kube, namespace, "viajob", "Complete")["spec"]["runtimeEnv"]["working_dir"] == uri
    assert line in kray(pm, "job", "logs", "viajob", "-n", namespace).stdout

    # job stop: Ray stops the running job; the RayJob stays, Suspended.
    kray(pm, "job", "submit", "--cluster", "demo", "--name", "sleeper", "-n", namespace, "--", PYTHON, "-c",
         "import time; print('sleeping', flush=True); time.sleep(300)")
    running = wait_until(lambda: (s := (_get(kube, jobs_path(namespace, "sleeper")) or {}).get("status") or {})
                         .get("jobStatus") == "RUNNING" and s, 180, 0.5, message="the sleeper RUNNING")
    wait_until(lambda: "sleeping" in kray(pm, "job", "logs", "sleeper", "-n", namespace).stdout, 60, 1,
               message="the sleeper's output in kubectl ray job logs")
    kray(pm, "job", "stop", "sleeper", "-n", namespace)
    wait_until(lambda: any(r["submission_id"] == running["submissionId"] and r["status"] == "STOPPED"
                           for r in ray_jobs(pm, kube, namespace, "demo")), 60, 1, message="Ray: the job STOPPED")
    wait_job(kube, namespace, "sleeper", "Suspended")

    logs = kray(pm, "logs", "demo", "--node-kind", "head", "-n", namespace).stdout
    head_lines = [line for line in logs.splitlines() if line.startswith("[pod/demo-head-")]
    assert head_lines and any("Ray runtime started" in line for line in head_lines), logs[-3000:]
