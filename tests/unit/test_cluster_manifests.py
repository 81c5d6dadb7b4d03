"""The cluster reads the rendered manifests as a kubelet would: which pods run where, with what."""

from __future__ import annotations

import sys
from pathlib import Path

from dayu.cluster.manifests import _on_this_machine, build, image_paths, pods, service_nodes
from dayu.mesh.kustomize import TOKENS_SECRET
from dayu.mesh.model import CONFIGS, load_mesh_config
from dayu.mesh.plan import certificate_holders, instances
from dayu.runtime.tls import secret_name


def test_every_instance_of_the_plan_is_a_pod_with_its_container_s_command_and_files() -> None:
    config = load_mesh_config(CONFIGS / "cluster.yaml")
    secrets = {  # as an operator (or cert-manager) makes them
        secret_name(component, node): {"ca.crt": "CA", "tls.crt": f"{component}.{node}", "tls.key": "KEY"}
        for component, node in certificate_holders(config)
    }
    secrets[TOKENS_SECRET] = {"tokens.yaml": "admin: [TOKEN]\n"}  # the operator's (kubectl create secret)
    documents = build(config)
    paths = image_paths(Path("/r"), Path("/b"))
    found = {pod.name: pod for pod in pods(documents, list(config.nodes), paths, secrets)}
    expected = {(i.component, i.node) for i in instances(config)}
    assert {(p.component, p.node) for p in found.values()} == expected  # no Triton: nothing on it here
    # A generator on every edge node, whether the mesh file puts streams there or not; none on the cloud.
    assert {p.node for p in found.values() if p.component == "generator"} == set(config.nodes) - {"cloud"}
    controller = found["dayu-controller@edge-1"]
    assert controller.argv == [
        str(Path(sys.prefix) / "bin" / "dayu"),  # the image's entrypoint, from this environment
        "serve",
        "controller",
        "--listen=0.0.0.0:50051",
        "--config=/etc/dayu/controller.edge-1.yaml",  # $(NODE_NAME) from spec.nodeName
        "--node=edge-1",
    ]
    assert controller.env == {
        "NODE_NAME": "edge-1",
        "DAYU_SERVER__HEALTH_LISTEN": "0.0.0.0:51051",  # plaintext health only, for the kubelet's probes
        "DAYU_TLS__CA_FILE": "/etc/dayu-tls/ca.crt",
        "DAYU_TLS__CERT_FILE": "/etc/dayu-tls/tls.crt",
        "DAYU_TLS__KEY_FILE": "/etc/dayu-tls/tls.key",
        # /metrics: 9464 in its own pod in Kubernetes; here the node's pods share a namespace.
        "DAYU_METRICS__LISTEN": "0.0.0.0:52051",
    }
    assert controller.ports["metrics"] == 52051
    assert ("config", "/etc/dayu") in controller.mounts and ("tls", "/etc/dayu-tls") in controller.mounts
    assert controller.volumes["tls"].files["tls.crt"] == "controller.edge-1"  # its own node's Secret
    settings = controller.volumes["config"].files["controller.edge-1.yaml"]
    assert "cloud: dayu-controller-cloud:50051" in settings and "distributor: dayu-distributor:50055" in settings
    processor = found["dayu-processor-text-detector@edge-2"]  # one workload per role and node
    assert processor.volumes["tls"].files["tls.crt"] == "processor.edge-2"
    assert "--config=/etc/dayu/processor.text_detector.edge-2.yaml" in processor.argv
    # The cluster's DNS: each Service at the node where the pods it selects run.
    nodes = service_nodes(documents, list(config.nodes))
    assert nodes["dayu-scheduler"] == "cloud" and nodes["dayu-controller-edge-1"] == "edge-1"
    assert nodes["dayu-processor-text-detector-edge-2"] == "edge-2"
    assert len(nodes) == len(found)  # a Service per pod: every per-node one, and the cloud singletons'
    distributor = found["dayu-distributor@cloud"]
    assert distributor.volumes["records"].persistent
    # The backend: the console on its named port, the operator's tokens as its Secret (mode 0440, as
    # the kubelet writes it), its database on a claim of its own; the scheduler takes the same tokens.
    backend = found["dayu-backend@cloud"]
    assert backend.port == 50057 and backend.ports == {
        "grpc": 50057,
        "health": 51057,
        "console": 8080,
        "metrics": 52057,
    }
    for pod in (backend, found["dayu-scheduler@cloud"]):
        assert ("tokens", "/etc/dayu-tokens") in pod.mounts, pod.name
        assert pod.volumes["tokens"].files == secrets[TOKENS_SECRET] and pod.volumes["tokens"].mode == 0o440
    assert ("backend-data", "/var/lib/dayu-backend") in backend.mounts and backend.volumes["backend-data"].persistent
    settings = backend.volumes["config"].files["backend.yaml"]
    assert "console_listen: 0.0.0.0:8080" in settings and "tokens_file: /etc/dayu-tokens/tokens.yaml" in settings
    assert "database: /var/lib/dayu-backend/backend.sqlite" in settings
    assert not [p.name for p in found.values() if "tokens" in p.volumes and p.component not in ("backend", "scheduler")]
    generator = found["dayu-generator@edge-2"]
    assert {"generator.edge-2.yaml", "pipelines.yaml"} <= set(generator.volumes["config"].files)  # projected


def test_image_paths_map_to_this_machine_by_whole_components() -> None:
    paths = image_paths(Path("/repo"), Path("/backends"))
    site = "/opt/venv/lib/python3.11/site-packages"
    assert _on_this_machine(f"--backend-directory={site}/pytriton/tritonserver/backends", paths) == (
        "--backend-directory=/backends"
    )
    assert _on_this_machine("--model-repository=/opt/dayu/triton_models", paths) == "--model-repository=/repo"
    assert _on_this_machine("/opt/venv/bin/dayu", paths) == f"{sys.prefix}/bin/dayu"
    assert _on_this_machine("/opt/venvs/other", paths) == "/opt/venvs/other"
    assert _on_this_machine("--grpc-port=50101", paths) == "--grpc-port=50101"
