"""The operator's side of the autoscaler: config producer (checked with Ray's own validator), RBAC rules, in-pod
files, commands, the launcher's summary and the pods the operator must replace."""

from __future__ import annotations

import copy
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rayop.api.convert import effective_cluster
from rayop.api.model import ClusterModel, ConfigurationError, RayResources
from rayop.autoscaler import (
    CONFIG_PATH,
    INPOD_FILES,
    PROVIDER_MODULE,
    autoscaler_role_rules,
    build_autoscaler_config,
    describe_validation_error,
    inpod_files,
    launcher_command,
    monitor_command,
    monitor_env,
    parse_launch_summary,
    render_autoscaler_config,
    validate_with_ray,
)

REPO = Path(__file__).resolve().parents[2]
SAMPLES = sorted((REPO / "manifests" / "samples").glob("*.yaml"))

pytest.importorskip("ray")


def model_of(spec: dict[str, Any], name: str = "demo") -> ClusterModel:
    return effective_cluster({"metadata": {"name": name, "namespace": "ns"}, "spec": spec}).cluster


STRUCTURED = {
    "workerGroups": [
        {"name": "small", "minWorkers": 1, "maxWorkers": 4, "rayStartParams": {"num-cpus": "2"}},
        {"name": "gpu", "maxWorkers": 2, "rayStartParams": {"num-cpus": "8", "num-gpus": "1",
                                                             "resources": '{"T4": 1, "half": 0.5}'}},
    ],
    "headRayStartParams": {"num-cpus": "0"},
    "autoScalingMode": "default",
    "targetUtilization": 80,
    "idleTimeoutMinutes": 7,
}

NODE_TYPES = """
max_workers: 5
upscaling_speed: 2.5
idle_timeout_minutes: 0.5
available_node_types:
  head.default:
    resources: {CPU: 1}
    node_config: {}
    max_workers: 0
  cpu:
    resources: {CPU: 2, memory: 4000000000}
    node_config: {}
    min_workers: 1
    max_workers: 3
    idle_timeout_s: 30
head_node_type: head.default
"""

LEGACY = """
min_workers: 1
max_workers: 3
initial_workers: 2
autoscaling_mode: aggressive
idle_timeout_minutes: 2
"""


# -- the config producer ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_every_sample_gives_a_config_ray_accepts(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            doc.setdefault("metadata", {})["namespace"] = "ns"
            config = build_autoscaler_config(effective_cluster(doc).cluster)
            assert validate_with_ray(config) is None


@pytest.mark.parametrize(
    "spec",
    [STRUCTURED, {"configuration": NODE_TYPES}, {"configuration": LEGACY}, {}],
    ids=["structured", "available_node_types", "legacy", "empty"],
)
def test_both_forms_give_configs_ray_accepts(spec: dict[str, Any]) -> None:
    config = build_autoscaler_config(model_of(spec))
    assert validate_with_ray(config) is None
    assert config["head_node_type"] == "head"
    assert set(config["available_node_types"]) >= {"head"}


def test_structured_form_maps_every_knob() -> None:
    config = build_autoscaler_config(model_of(STRUCTURED))
    assert config["cluster_name"] == "demo"
    assert config["upscaling_speed"] == pytest.approx(0.25)  # 100/80 - 1
    assert config["idle_timeout_minutes"] == 7.0
    assert config["max_workers"] == 6
    types = config["available_node_types"]
    assert types["head"] == {"resources": {"CPU": 0}, "node_config": {}, "min_workers": 0, "max_workers": 0}
    assert types["small"] == {"resources": {"CPU": 2}, "node_config": {}, "min_workers": 1, "max_workers": 4}
    # Ray's schema wants integers: the fractional custom resource is rounded down.
    assert types["gpu"]["resources"] == {"CPU": 8, "GPU": 1, "T4": 1, "half": 0}
    assert (types["gpu"]["min_workers"], types["gpu"]["max_workers"]) == (0, 2)


def test_provider_section_has_the_flags_a_batching_provider_needs() -> None:
    provider = build_autoscaler_config(model_of(STRUCTURED))["provider"]
    assert provider == {
        "type": "external",
        "module": PROVIDER_MODULE,
        "namespace": "ns",
        "ray_name": "demo",
        "api_version": "ray.k8s.io/v1alpha1",
        "plural": "rays",
        "disable_node_updaters": True,
        "disable_launch_config_check": True,
        "foreground_node_launch": True,
        "worker_liveness_check": False,
    }


def test_configuration_form_keeps_group_names_idle_timeouts_and_speed() -> None:
    config = build_autoscaler_config(model_of({"configuration": NODE_TYPES}))
    types = config["available_node_types"]
    assert set(types) == {"head", "cpu"}
    assert types["cpu"]["idle_timeout_s"] == 30.0
    assert (types["cpu"]["min_workers"], types["cpu"]["max_workers"]) == (1, 3)
    assert (config["upscaling_speed"], config["idle_timeout_minutes"], config["max_workers"]) == (2.5, 0.5, 3)


def test_legacy_aggressive_mode_becomes_upscaling_speed() -> None:
    config = build_autoscaler_config(model_of({"configuration": LEGACY}))
    assert config["upscaling_speed"] == 99999.0
    assert "autoscaling_mode" not in config and "target_utilization_fraction" not in config
    assert config["idle_timeout_minutes"] == 2.0
    assert config["available_node_types"]["worker"]["min_workers"] == 1


def test_disabled_mode_gives_a_static_config() -> None:
    model = model_of({"minWorkers": 1, "maxWorkers": 5, "initialWorkers": 3, "autoScalingMode": "disabled"})
    assert not model.autoscaling.enabled
    config = build_autoscaler_config(model)
    worker = config["available_node_types"]["worker"]
    assert (worker["min_workers"], worker["max_workers"], config["max_workers"]) == (3, 3, 3)
    assert validate_with_ray(config) is None


def test_resources_override_wins_over_the_model() -> None:
    model = model_of({"minWorkers": 0, "maxWorkers": 2})
    config = build_autoscaler_config(
        model, resources={"head": RayResources(cpu=1), "worker": RayResources(cpu=2, memory=2**30)}
    )
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 1}
    assert config["available_node_types"]["worker"]["resources"] == {"CPU": 2, "memory": 2**30}


def test_the_producer_is_pure_and_returns_fresh_values() -> None:
    model = model_of(STRUCTURED)
    before = copy.deepcopy(model)
    first = build_autoscaler_config(model)
    first["available_node_types"]["small"]["resources"]["CPU"] = 99
    first["file_mounts"]["x"] = "y"
    second = build_autoscaler_config(model)
    assert second["available_node_types"]["small"]["resources"]["CPU"] == 2
    assert second["file_mounts"] == {}
    assert model == before
    assert json.loads(json.dumps(second)) == second
    assert yaml.safe_load(render_autoscaler_config(model)) == second


def test_a_config_ray_rejects_comes_back_as_a_message() -> None:
    # The cluster-wide cap is below the sum of the group minima: only Ray checks that.
    model = model_of({"configuration": NODE_TYPES.replace("max_workers: 5", "max_workers: 0", 1)})
    message = validate_with_ray(build_autoscaler_config(model))
    assert message is not None and "max_workers" in message
    bad = build_autoscaler_config(model_of(STRUCTURED))
    bad["provider"]["type"] = 7
    assert validate_with_ray(bad) == "provider.type: 7 is not of type 'string'"
    del bad["cluster_name"]
    assert "cluster_name" in (validate_with_ray(bad) or "")


def test_describe_validation_error_without_a_schema_path() -> None:
    assert describe_validation_error(ValueError("plain")) == "plain"
    assert describe_validation_error(RuntimeError()) == "RuntimeError"


# Property: whatever valid cluster either form describes, Ray accepts the config, or names its one extra rule.
counts = st.integers(min_value=0, max_value=6)
start_params = st.fixed_dictionaries(
    {},
    optional={
        "num-cpus": st.integers(0, 64).map(str),
        "num-gpus": st.integers(0, 8).map(str),
        "memory": st.integers(0, 2**40).map(str),
        "resources": st.dictionaries(st.sampled_from(["a", "b", "TPU"]), st.floats(0, 100), max_size=2).map(json.dumps),
    },
)
groups = st.lists(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["a", "b", "c", "gpu"])},
        optional={"minWorkers": counts, "maxWorkers": counts, "initialWorkers": counts, "rayStartParams": start_params},
    ),
    min_size=1, max_size=3, unique_by=lambda g: g["name"],
)
structured_specs = st.fixed_dictionaries(
    {"workerGroups": groups},
    optional={
        "autoScalingMode": st.sampled_from(["default", "aggressive", "disabled"]),
        "targetUtilization": st.integers(1, 100),
        "idleTimeoutMinutes": st.integers(0, 60),
        "headRayStartParams": start_params,
        "desiredWorkers": st.dictionaries(st.sampled_from(["a", "b", "c"]), counts, max_size=3),
    },
)
node_type = st.fixed_dictionaries(
    {"resources": st.dictionaries(st.sampled_from(["CPU", "GPU", "memory", "x"]), st.integers(0, 100), max_size=3),
     "node_config": st.just({})},
    optional={"min_workers": counts, "max_workers": counts, "idle_timeout_s": st.floats(0, 1000)},
)
def _with_head(config: dict[str, Any]) -> dict[str, Any]:
    types = {**config["available_node_types"], "h": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0}}
    return {**config, "available_node_types": types, "head_node_type": "h"}


node_type_configs = st.fixed_dictionaries(
    {"available_node_types": st.dictionaries(st.sampled_from(["w1", "w2", "gpu-x"]), node_type, min_size=1, max_size=3)},
    optional={
        "max_workers": st.integers(0, 20),
        "upscaling_speed": st.floats(0, 100),
        "idle_timeout_minutes": st.floats(0, 100),
    },
).map(_with_head)


def _check_model(model: ClusterModel) -> None:
    config = build_autoscaler_config(model)
    message = validate_with_ray(config)
    minima = sum(t.get("min_workers", 0) for t in config["available_node_types"].values())
    if minima > config["max_workers"]:
        assert message is not None and "max_workers" in message
    else:
        assert message is None, (message, config)
    for group in model.worker_groups:
        resources = config["available_node_types"][group.name]["resources"]
        assert all(isinstance(v, int) and v >= 0 for v in resources.values())
        assert resources.get("CPU") == group.resources.cpu
    assert math.isfinite(config["upscaling_speed"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structured_specs)
def test_any_valid_structured_spec_gives_a_config_ray_accepts(spec: dict[str, Any]) -> None:
    try:
        model = model_of(spec)
    except ConfigurationError:
        return
    _check_model(model)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(node_type_configs)
def test_any_valid_node_types_configuration_gives_a_config_ray_accepts(config: dict[str, Any]) -> None:
    try:
        model = model_of({"configuration": yaml.safe_dump(config)})
    except ConfigurationError:
        return
    _check_model(model)


# -- RBAC, in-pod files, commands --------------------------------------------------------------------------------


def test_role_rules_are_the_least_that_works() -> None:
    assert autoscaler_role_rules("demo") == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["ray.k8s.io"], "resources": ["rays"], "resourceNames": ["demo"], "verbs": ["get", "patch"]},
    ]
    assert autoscaler_role_rules("a") is not autoscaler_role_rules("a")


def test_inpod_files_are_the_standalone_programs() -> None:
    files = inpod_files()
    assert set(files) == set(INPOD_FILES) == {"rayop_provider.py", "rayop_monitor.py", "rayop_launcher.py"}
    for name, text in files.items():
        assert text == (REPO / "controller" / "inpod" / name).read_text()
        compile(text, name, "exec")
        imports = [line.split()[1] for line in text.splitlines() if line.startswith(("import ", "from "))]
        for module in imports:
            root = module.split(".")[0]
            assert root not in ("rayop", "kubernetes", "yaml"), f"{name} imports {module}"
    assert "class RayopNodeProvider(BatchingNodeProvider)" in files["rayop_provider.py"]


def test_commands_and_environment() -> None:
    assert monitor_command() == ["python", "/etc/rayop/rayop_monitor.py", "--config", CONFIG_PATH]
    env = {e["name"]: e for e in monitor_env("demo")}
    assert env["RAY_CLUSTER_NAME"]["value"] == "demo"
    assert env["RAY_CLUSTER_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["RAY_HEAD_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["PYTHONPATH"]["value"] == "/etc/rayop"
    assert env["RAY_enable_autoscaler_v2"]["value"] == "0"
    model = model_of({"workerGroups": [{"name": "a", "initialWorkers": 2, "maxWorkers": 3},
                                       {"name": "b", "initialWorkers": 1, "maxWorkers": 1}]})
    assert launcher_command(model, "demo-head.ns.svc", 90) == [
        "python", "/etc/rayop/rayop_launcher.py", "--config", CONFIG_PATH, "--address", "demo-head.ns.svc:6379",
        "--expect-workers", "3", "--timeout", "90",
    ]
    assert launcher_command(model, "10.0.0.1:7000")[5] == "10.0.0.1:7000"
    assert launcher_command(model, "[fd00::1]")[5] == "[fd00::1]:6379"


# -- what the operator reads back -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, exit_code, expected",
    [
        ('{"succeeded": true, "reason": "Launched", "message": "ok", "workersExpected": 2, "workersJoined": 2, '
         '"rayVersion": "2.60.0", "elapsedSeconds": 12.5}', 0, (True, "Launched", "ok", 2, 2, "2.60.0", 12.5)),
        ('log line\n{"succeeded": false, "reason": "InvalidConfig", "message": "max_workers: bad"}', 2,
         (False, "InvalidConfig", "max_workers: bad", None, None, None, None)),
        ('{"succeeded": false, "reason": "WorkersNotJoined", "message": "1 of 2", "workersJoined": 1}\n', 4,
         (False, "WorkersNotJoined", "1 of 2", None, 1, None, None)),
        ("", 0, (True, "Launched", "the launcher succeeded without a summary", None, None, None, None)),
        (None, 137, (False, "NoSummary", "the launcher ended without a summary (exit code 137)", None, None, None, None)),
        ("not json\n[1, 2]", None, (False, "NoSummary", "the launcher ended without a summary", None, None, None, None)),
        ('{"reason": 5, "message": 7, "workersJoined": true, "elapsedSeconds": "x"}', 1,
         (False, "LauncherError", "", None, None, None, None)),
        ('{"message": "fine"}', 0, (True, "Launched", "fine", None, None, None, None)),
    ],
    ids=["success", "invalid-config", "workers", "empty-ok", "none-killed", "garbage", "wrong-types", "no-flag"],
)
def test_parse_launch_summary(text: str | None, exit_code: int | None, expected: tuple[Any, ...]) -> None:
    s = parse_launch_summary(text, exit_code=exit_code)
    assert (s.succeeded, s.reason, s.message, s.workers_expected, s.workers_joined, s.ray_version,
            s.elapsed_seconds) == expected


NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
