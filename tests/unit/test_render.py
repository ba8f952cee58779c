"""`rayop render`: offline manifests for a Ray file, as a YAML stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from rayop.cli import main
from rayop.defaults import Options
from rayop.render import render_ray

SAMPLES = sorted((Path(__file__).resolve().parents[2] / "manifests" / "samples").glob("*.yaml"))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, Any]], str]:
    code = main(["render", *argv])
    out, err = capsys.readouterr()
    return code, [d for d in yaml.safe_load_all(out) if d], err


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_every_sample_renders(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, docs, err = run(capsys, str(path))
    assert code == 0, err
    kinds = [d["kind"] for d in docs]
    roles = [d["metadata"]["labels"]["ray.k8s.io/node-kind"] for d in docs]
    assert kinds.count("Pod") >= 2 and kinds.count("ConfigMap") == kinds.count("Service") == 1
    assert "Job" not in kinds
    # The launcher pod comes last, after the head and the workers.
    assert (kinds[-1], roles[-1], roles.count("launcher")) == ("Pod", "launcher", 1)
    assert kinds.index("ConfigMap") < kinds.index("Pod") and roles.index("head") < roles.index("launcher")
    assert all("ownerReferences" not in d["metadata"] for d in docs)


def test_one_document_per_desired_pod_and_options_apply(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "r.yaml"
    f.write_text("apiVersion: ray.k8s.io/v1alpha1\nkind: Ray\nmetadata: {name: r}\n"
                 "spec: {autoScalingMode: disabled, initialWorkers: 3, maxWorkers: 3}\n")
    code, docs, _ = run(capsys, str(f), "-n", "team", "--ray-image", "me/ray:2.60.0")
    assert code == 0
    pods = [d for d in docs if d["kind"] == "Pod"]
    assert [p["metadata"].get("generateName") for p in pods] == ["r-head-", "r-worker-", "r-worker-", "r-worker-",
                                                                None]
    assert pods[-1]["metadata"]["name"].startswith("r-launcher-")
    assert {p["spec"]["containers"][0]["image"] for p in pods} == {"me/ray:2.60.0"}
    assert {d["metadata"]["namespace"] for d in docs} == {"team"}


def test_invalid_ray_is_reported_and_others_still_render(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "r.yaml"
    f.write_text("apiVersion: ray.k8s.io/v1alpha1\nkind: Ray\nmetadata: {name: bad}\nspec: {minWorkers: 3, "
                 "maxWorkers: 1}\n---\napiVersion: ray.k8s.io/v1alpha1\nkind: Ray\nmetadata: {name: good}\n")
    code, docs, err = run(capsys, str(f))
    assert code == 1 and "bad: spec.minWorkers" in err
    assert {d["metadata"]["labels"]["ray.k8s.io/cluster"] for d in docs} == {"good"}


@pytest.mark.parametrize("text, message", [("kind: Pod\n", "no ray.k8s.io/v1alpha1 Ray"), ("a: [", "invalid YAML")],
                         ids=["no-ray", "bad-yaml"])
def test_files_without_rays(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str) -> None:
    f = tmp_path / "r.yaml"
    f.write_text(text)
    code, _, err = run(capsys, str(f))
    assert code == 1 and message in err


def test_render_ray_is_pure() -> None:
    ray = {"apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray", "metadata": {"name": "x", "namespace": "n"},
           "spec": {}}
    docs = render_ray(ray, Options(), autoscaler_config=lambda m: "cluster_name: x\n", programs={})
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    assert config["data"] == {"autoscaler.yaml": "cluster_name: x\n"}
    assert ray == {"apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray", "metadata": {"name": "x", "namespace": "n"},
                   "spec": {}}


RAYJOB_SAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "rayjob"


def test_rayjob_renders_as_its_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    code, docs, err = run(capsys, str(RAYJOB_SAMPLES / "every-node.yaml"), "-n", "team")
    assert code == 0, err
    ray, *children = docs
    assert (ray["kind"], ray["metadata"]["name"], ray["metadata"]["namespace"]) == ("Ray", "every-node-1", "team")
    assert ray["metadata"]["labels"]["ray.k8s.io/rayjob"] == "every-node"
    assert "ownerReferences" not in ray["metadata"]
    assert ray["spec"]["initialWorkers"] == 1
    assert [d["kind"] for d in children].count("Pod") == 3  # head, one worker, the launcher
    assert all(d["metadata"]["labels"]["ray.k8s.io/cluster"] == "every-node-1" for d in children)


def test_rayjob_on_an_existing_cluster_renders_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    code, docs, err = run(capsys, str(RAYJOB_SAMPLES / "on-existing-cluster.yaml"))
    assert code == 1 and not docs
    assert "clusterSelector" in err
