"""Which models the mesh's Tritons load at start, from the one plan every mode reads: a node's
always-loaded processors' models (their kinds', and those their pipeline stages name), never its
deployable ones'; the same arguments for the embedded Triton and the manifests' per-node ones; and a
deployable processor releases its models only where no other processor on its Triton runs them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dayu.cluster.manifests import build, image_paths, pods
from dayu.mesh.kustomize import TOKENS_SECRET, KubernetesWiring, render
from dayu.mesh.model import CONFIGS, MeshConfig, load_mesh_config
from dayu.mesh.plan import (
    Instance,
    certificate_holders,
    processor_models,
    settings,
    triton_arguments,
    triton_models,
    triton_nodes,
)
from dayu.runtime.tls import secret_name


class SharedTriton(KubernetesWiring):
    """The embedded mesh's wiring as far as Triton goes: one server for every node."""

    def triton(self, node: str) -> str:
        return "127.0.0.1:8001"


def _mesh(tmp_path: Path, nodes: dict[str, Any], **changes: Any) -> MeshConfig:
    data: dict[str, Any] = {
        "nodes": nodes,
        "pipelines_file": str(CONFIGS / "pipelines.yaml"),
        "processors": {
            "text_detector": {"params": {"backend": "triton"}},
            "text_recognizer": {"params": {"backend": "triton"}},
            "fast_detector": {"kind": "text_detector", "params": {"backend": "triton", "max_side": 480}},
            "local_detector": {"kind": "text_detector"},  # in process: not Triton's
        },
        **changes,
    }
    return load_mesh_config(tmp_path / "mesh.yaml", data)


def _releases(config: MeshConfig, node: str, name: str, wiring: KubernetesWiring) -> bool:
    return bool(
        settings(config, Instance("processor", node, name), wiring)["processor"]["deployable"]["release_models"]
    )


def test_a_node_s_triton_loads_its_always_loaded_processors_models_not_its_deployable_ones(tmp_path: Path) -> None:
    config = _mesh(
        tmp_path,
        {
            "cloud": {"processors": ["text_detector", "text_recognizer", "merge"]},
            "edge-1": {"processors": ["local_detector"], "deployable": ["text_recognizer"]},
            "edge-2": {"processors": ["color_classifier"], "deployable": ["fast_detector"]},
        },
    )
    assert triton_nodes(config) == ["cloud", "edge-1", "edge-2"]
    assert triton_models(config, ["cloud"]) == ["text_detection", "text_recognition"]
    assert triton_models(config, ["edge-1"]) == triton_models(config, ["edge-2"]) == []
    assert triton_arguments(config, ["edge-2"]) == ["--model-control-mode=explicit"]  # loads on the plan only
    # One Triton for all (embedded): the union.
    assert triton_arguments(config, ["cloud", "edge-1", "edge-2"]) == [
        "--model-control-mode=explicit",
        "--load-model=text_detection",
        "--load-model=text_recognition",
    ]


def test_models_named_by_pipeline_stages_and_golden_scorers_on_triton_load_too(tmp_path: Path) -> None:
    pipelines = {
        "pipelines": [
            {
                "name": "vehicles",
                "stages": [
                    {
                        "name": "detect",
                        "processor": "text_detector",
                        "model": "object_detection",
                        "input_type": "DATA_TYPE_FRAMES",
                        "output_type": "DATA_TYPE_BOXES",
                    },
                ],
            }
        ]
    }
    (tmp_path / "pipelines.yaml").write_text(yaml.safe_dump(pipelines))
    config = _mesh(
        tmp_path,
        {"cloud": {"processors": ["merge"]}, "edge-1": {"processors": ["text_detector"]}},
        pipelines_file=str(tmp_path / "pipelines.yaml"),
        golden={"text_recognizer": {"params": {"batch_size": 8}}},
    )
    assert processor_models(config, "text_detector") == ["text_detection", "object_detection"]
    assert triton_models(config, ["edge-1"]) == ["object_detection", "text_detection"]
    assert triton_nodes(config) == ["cloud", "edge-1"]  # the cloud for its golden recogniser on Triton
    assert triton_models(config, ["cloud"]) == ["text_recognition"]


def test_a_deployable_processor_keeps_a_model_another_processor_runs_on_its_triton(tmp_path: Path) -> None:
    config = _mesh(
        tmp_path,
        {
            "cloud": {"processors": ["text_detector"]},
            "edge-1": {"deployable": ["text_recognizer"]},
            "edge-2": {"deployable": ["fast_detector"]},  # text_detection, as the cloud's text_detector
        },
    )
    own, shared = KubernetesWiring(config), SharedTriton(config)
    # A Triton per node (Kubernetes, the cluster): each releases its models.
    assert _releases(config, "edge-1", "text_recognizer", own) and _releases(config, "edge-2", "fast_detector", own)
    # One Triton (embedded): edge-2's detector shares text_detection with the cloud's, so it only stops
    # taking tasks; edge-1's recogniser is the only one on text_recognition and frees it.
    assert _releases(config, "edge-1", "text_recognizer", shared)
    assert not _releases(config, "edge-2", "fast_detector", shared)
    # Two nodes whose deployable processors share a model on one Triton: neither unloads it from the other.
    both = _mesh(
        tmp_path,
        {"cloud": {}, "edge-1": {"deployable": ["text_detector"]}, "edge-2": {"deployable": ["fast_detector"]}},
    )
    assert not _releases(both, "edge-1", "text_detector", SharedTriton(both))
    assert _releases(both, "edge-1", "text_detector", KubernetesWiring(both))


def test_each_node_s_triton_in_the_manifests_gets_the_plan_s_arguments() -> None:
    config = load_mesh_config(CONFIGS / "embedded.yaml")
    files = render(config, "")
    for node in triton_nodes(config):
        for folder in (f"nodes/triton-{node}", f"gpu/triton-gpu-{node}"):
            patch = yaml.safe_load(files[f"{folder}/models.yaml"])
            assert [op["value"] for op in patch] == triton_arguments(config, [node])
            assert {op["path"] for op in patch} == {"/spec/template/spec/containers/0/args/-"}
            kustomization = yaml.safe_load(files[f"{folder}/kustomization.yaml"])
            assert {"path": "models.yaml", "target": {"kind": "DaemonSet"}} in kustomization["patches"]
    assert triton_arguments(config, ["edge-2"]) == ["--model-control-mode=explicit", "--load-model=text_detection"]


def test_the_cluster_starts_each_node_s_triton_with_the_plan_s_arguments(tmp_path: Path) -> None:
    """The cluster of real nodes runs the rendered manifests: its Triton processes get the same flags."""
    config = _mesh(
        tmp_path,
        {"cloud": {"processors": ["text_detector", "text_recognizer"]}, "edge-2": {"deployable": ["text_detector"]}},
    )
    secrets = {secret_name(component, node): {} for component, node in certificate_holders(config)}
    secrets[TOKENS_SECRET] = {}
    paths = image_paths(Path("/r"), Path("/b"))
    found = {
        pod.node: pod.argv
        for pod in pods(build(config), list(config.nodes), paths, secrets)
        if pod.component == "triton"
    }
    assert set(found) == {"cloud", "edge-2"}
    for node, argv in found.items():
        assert argv[-len(triton_arguments(config, [node])) :] == triton_arguments(config, [node])
    assert [arg for arg in found["edge-2"] if "model" in arg] == [
        "--model-repository=/r",
        "--model-control-mode=explicit",
    ]
