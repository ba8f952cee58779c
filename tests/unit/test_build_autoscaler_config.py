"""The autoscaler config in the ConfigMap offers what the built pods really get."""

from __future__ import annotations

from pathlib import Path

import yaml

from rayop.api.convert import effective_cluster
from rayop.autoscaler import CONFIG_FILE
from rayop.build import build_children, ray_resources
from rayop.defaults import Options

SAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "samples"


def test_seed_sample_without_templates_advertises_default_container_resources() -> None:
    ray = yaml.safe_load((SAMPLES / "seed-structured.yaml").read_text())
    ray["metadata"]["uid"] = "u1"
    model = effective_cluster(ray).cluster
    options = Options()
    desired = build_children(ray, model, options, programs={})
    config = yaml.safe_load(desired.config_map["data"][CONFIG_FILE])
    worker = model.worker_groups[0]
    expected = ray_resources(worker, options)
    assert expected.cpu == 1  # the default worker container: 1 CPU
    assert config["available_node_types"][worker.name]["resources"]["CPU"] == expected.cpu
    assert config["available_node_types"]["head"]["resources"]["CPU"] == ray_resources(model.head, options).cpu
