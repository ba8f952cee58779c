"""Pod templates whose fields the builders read have the wrong type: the conversion names the field
(ConfigurationError) instead of the builders failing. Found by tests/unit/test_fuzz_pipeline.py."""

from __future__ import annotations

from typing import Any

import pytest

from rayop.api.convert import effective_cluster, parse_configuration
from rayop.api.model import ConfigurationError


def ray(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray",
            "metadata": {"name": "t", "namespace": "ns", "uid": "u", "generation": 1}, "spec": spec}


@pytest.mark.parametrize(("template", "field"), [
    ({"metadata": {"labels": " "}}, "spec.worker.metadata.labels"),
    ({"metadata": {"labels": {"a": 1}}}, "spec.worker.metadata.labels"),
    ({"metadata": "x"}, "spec.worker.metadata"),
    ({"spec": {"containers": 3}}, "spec.worker.spec.containers"),
    ({"spec": {"containers": ["x"]}}, "spec.worker.spec.containers[0]"),
    ({"spec": {"containers": [{"name": "ray-worker", "env": {"A": "b"}}]}}, "spec.worker.spec.containers[0].env"),
    ({"spec": {"containers": [{"name": 7}]}}, "spec.worker.spec.containers[0].name"),
    ({"spec": {"containers": [{"name": "c", "command": ["a", 1]}]}}, "spec.worker.spec.containers[0].command[1]"),
    ({"spec": {"containers": [{"name": "c", "resources": {"limits": []}}]}},
     "spec.worker.spec.containers[0].resources.limits"),
    ({"spec": {"nodeSelector": {"k": True}}}, "spec.worker.spec.nodeSelector"),
    ({"spec": {"volumes": "dshm"}}, "spec.worker.spec.volumes"),
    ({"spec": {"volumes": [{"name": ["x"]}]}}, "spec.worker.spec.volumes[0].name"),
    ({"spec": {"containers": [{"name": "c", "ports": [{"containerPort": [1]}]}]}},
     "spec.worker.spec.containers[0].ports[0].containerPort"),
    ({"spec": {"containers": [{"name": "c", "env": [{"name": {"a": 1}}]}]}},
     "spec.worker.spec.containers[0].env[0].name"),
    ({"spec": {"containers": [{"name": "c", "volumeMounts": [{"name": "v", "mountPath": 3}]}]}},
     "spec.worker.spec.containers[0].volumeMounts[0].mountPath"),
])
def test_mistyped_template_fields_are_named(template: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as error:
        effective_cluster(ray({"worker": template}))
    assert error.value.field == field


def test_configuration_pod_manifest_is_checked_too() -> None:
    config = "cluster_name: c\nhead_node:\n  spec:\n    containers: 5\nworker_nodes: {}\n"
    with pytest.raises(ConfigurationError) as error:
        effective_cluster(ray({"configuration": config}))
    assert error.value.field is not None and error.value.field.endswith("spec.containers")


def test_well_typed_templates_still_convert() -> None:
    template = {"metadata": {"labels": {"team": "a"}, "annotations": {"x": "y"}},
                "spec": {"nodeSelector": {"k": "v"}, "containers": [
                    {"name": "ray-worker", "image": "rayproject/ray:2.60.0", "command": ["a"], "env": [],
                     "resources": {"limits": {"cpu": "1"}}}]}}
    effective_cluster(ray({"worker": template}))


def test_a_yaml_alias_bomb_gives_a_short_message() -> None:
    """A few hundred bytes of YAML aliases spell out a list of ten million elements (two more lines: a billion); the message about it stays short (it
    goes into the status and an Event) and is built in bounded time and memory."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 7)]
    for key in ("max_workers", "upscaling_speed", "cluster_name"):
        config = "\n".join(lines) + f"\n{key}: *a6\n"
        try:
            effective_cluster(ray({"configuration": config}))
        except ConfigurationError as error:
            assert len(error.describe()) < 2000, (key, len(error.describe()))


@pytest.mark.parametrize("value", ["0.0.0.0", "abc", "70000", "-1", "٣"])
def test_a_port_flag_that_is_no_port_number_is_a_configuration_error(value: str) -> None:
    # The builders put --*-port values into the pods' container ports; the fuzzer found 'dashboard-port: 0.0.0.0'
    # raising ValueError there on every reconcile.
    obj = {"apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray",
           "metadata": {"name": "demo", "namespace": "ray", "uid": "u", "generation": 1},
           "spec": {"minWorkers": 1, "maxWorkers": 1, "workerRayStartParams": {"dashboard-port": value}}}
    with pytest.raises(ConfigurationError) as err:
        effective_cluster(obj)
    assert err.value.describe().startswith("spec.workerRayStartParams.dashboard-port:")


def test_a_port_flag_in_a_start_command_is_checked_too() -> None:
    config = ("cluster_name: demo\nmax_workers: 1\n"
              "head_start_ray_commands: ['ray start --head --dashboard-port=0.0.0.0']\n"
              "worker_start_ray_commands: ['ray start --address=$RAY_HEAD_IP:6379']\n")
    obj = {"apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray",
           "metadata": {"name": "demo", "namespace": "ray", "uid": "u", "generation": 1},
           "spec": {"configuration": config}}
    with pytest.raises(ConfigurationError) as err:
        effective_cluster(obj)
    assert "head_start_ray_commands[0]" in err.value.describe()


def test_a_configuration_that_expands_through_aliases_is_refused_cheaply() -> None:
    # Nine levels of ten-fold aliases ("billion laughs"): a few hundred bytes of YAML, 10^9 values once copied.
    levels = "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9))
    text = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + levels + "head_node: *a8\n"
    with pytest.raises(ConfigurationError) as err:
        parse_configuration(text)
    assert "through YAML aliases" in err.value.describe()
    # A cycle (an alias inside its own anchor) is refused the same way; ordinary sharing is fine.
    with pytest.raises(ConfigurationError):
        parse_configuration("a: &a [1, *a]\n")
    assert parse_configuration("p: &p [1, 2]\nq: [*p, *p]\n") == {"p": [1, 2], "q": [[1, 2], [1, 2]]}
