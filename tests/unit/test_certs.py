"""Mutual TLS's pieces without a server: the settings (all three files or none), the identity a
certificate carries, the certificates dayu.runtime.certs makes, the mesh's certificate holders, the
Secrets hack/make_certs.py writes, and the cluster's secret volumes."""

from __future__ import annotations

import base64
import importlib.util
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from dayu.cluster.manifests import _volumes, image_paths, pods
from dayu.mesh.model import CONFIGS, load_mesh_config
from dayu.mesh.plan import PORTS, certificate_holders, health_port, triton_nodes
from dayu.processor.service import ProcessorSettings, _with_tls
from dayu.runtime.certs import issue, make_ca
from dayu.runtime.config import ComponentSettings, load_settings
from dayu.runtime.errors import InvalidArgument
from dayu.runtime.tls import CA_NAME, MESH_NAME, Identity, TlsSettings, common_name, secret_name

ROOT = Path(__file__).resolve().parents[2]


def test_tls_settings_are_all_three_files_or_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not load_settings(ComponentSettings).tls.enabled  # the default: plaintext
    with pytest.raises(InvalidArgument) as caught:
        load_settings(ComponentSettings, tls={"ca_file": "/ca.crt"})
    assert caught.value.field == "config.tls"
    assert "tls.cert_file and tls.key_file empty while tls.ca_file set" in str(caught.value)
    with pytest.raises(InvalidArgument, match=r"tls\.key_file empty"):
        load_settings(ComponentSettings, tls={"ca_file": "a", "cert_file": "b"})

    folder = tmp_path / "tls"
    issue(make_ca(), "monitor", "edge-1").write(folder)
    for name, file in (("CA_FILE", "ca.crt"), ("CERT_FILE", "tls.crt"), ("KEY_FILE", "tls.key")):
        monkeypatch.setenv(f"DAYU_TLS__{name}", str(folder / file))
    settings = load_settings(ProcessorSettings)
    assert settings.tls == TlsSettings.in_directory(folder)
    assert settings.tls.enabled and settings.tls.material().key.startswith(b"-----BEGIN PRIVATE KEY")


def test_an_unreadable_file_is_named_by_its_setting(tmp_path: Path) -> None:
    settings = TlsSettings.in_directory(tmp_path)
    (tmp_path / "ca.crt").write_text("pem")
    with pytest.raises(InvalidArgument) as caught:
        settings.material()
    assert caught.value.field == "tls.ca_file" and "holds none" in str(caught.value)
    issue(make_ca(), "monitor", "edge-1").write(tmp_path)
    (tmp_path / "tls.crt").unlink()
    with pytest.raises(InvalidArgument) as caught:
        settings.material()
    assert caught.value.field == "tls.cert_file" and str(tmp_path / "tls.crt") in str(caught.value)


def test_identity_is_component_dot_node() -> None:
    assert Identity.parse("monitor.edge-1") == Identity("monitor", "edge-1")
    assert Identity.parse("processor.gpu-3.lab.example") == Identity("processor", "gpu-3.lab.example")
    assert str(Identity("operator", "admin")) == "operator.admin"
    for bad in ("monitor", ".edge-1", "monitor.", ""):
        with pytest.raises(ValueError, match=r"is not COMPONENT\.NODE"):
            Identity.parse(bad)
    with pytest.raises(ValueError):
        common_name("my.monitor", "edge-1")
    assert secret_name("monitor", "edge-1") == "dayu-tls-monitor-edge-1"


def _subject(certificate: x509.Certificate, oid: x509.ObjectIdentifier) -> str:
    return str(certificate.subject.get_attributes_for_oid(oid)[0].value)


def test_certificates_carry_the_identity_contract() -> None:
    ca = make_ca()
    issued = issue(ca, "scheduler", "cloud")
    certificate = x509.load_pem_x509_certificate(issued.cert)
    authority = x509.load_pem_x509_certificate(issued.ca)
    assert _subject(certificate, x509.NameOID.COMMON_NAME) == "scheduler.cloud"
    assert _subject(certificate, x509.NameOID.ORGANIZATION_NAME) == "dayu"
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [MESH_NAME]
    assert _subject(authority, x509.NameOID.COMMON_NAME) == CA_NAME
    certificate.verify_directly_issued_by(authority)
    assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert authority.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    validity = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert 364 <= validity.days <= 366
    with pytest.raises(InvalidSignature):  # another CA (of the same name) did not sign it
        certificate.verify_directly_issued_by(make_ca().certificate)


def test_every_component_and_node_of_a_mesh_has_one_certificate_and_a_health_port() -> None:
    config = load_mesh_config(CONFIGS / "cluster.yaml")
    holders = certificate_holders(config)
    assert len(holders) == len(set(holders))
    assert ("processor", "edge-2") in holders and ("scheduler", "cloud") in holders
    assert {c for c, _ in holders} == {
        "scheduler",
        "processor",
        "distributor",
        "datasource",
        "backend",
        "controller",
        "monitor",
        "generator",
    }  # processors in-process: no Triton
    embedded = load_mesh_config(CONFIGS / "embedded.yaml")
    assert {("triton", node) for node in triton_nodes(embedded)} <= set(certificate_holders(embedded))
    assert health_port(PORTS["controller"]) == 51051


def _load_make_certs():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("make_certs", ROOT / "hack" / "make_certs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_certs"] = module
    spec.loader.exec_module(module)
    return module


def test_make_certs_writes_a_folder_and_a_secret_per_certificate(tmp_path: Path) -> None:
    make_certs = _load_make_certs()
    out, secrets = tmp_path / "tls", tmp_path / "secrets.yaml"
    assert make_certs.main(["--mesh", str(CONFIGS / "cluster.yaml"), "--out", str(out), "--secrets", str(secrets)]) == 0
    config = load_mesh_config(CONFIGS / "cluster.yaml")
    expected = [*certificate_holders(config), ("operator", "admin")]
    documents = list(yaml.safe_load_all(secrets.read_text()))
    assert [d["metadata"]["name"] for d in documents] == [secret_name(c, n) for c, n in expected]
    monitor = next(d for d in documents if d["metadata"]["name"] == "dayu-tls-monitor-edge-1")
    assert monitor["type"] == "kubernetes.io/tls" and set(monitor["data"]) == {"ca.crt", "tls.crt", "tls.key"}
    certificate = x509.load_pem_x509_certificate(base64.b64decode(monitor["data"]["tls.crt"]))
    assert _subject(certificate, x509.NameOID.COMMON_NAME) == "monitor.edge-1"
    assert (out / "monitor-edge-1" / "tls.key").stat().st_mode & 0o077 == 0
    operator = x509.load_pem_x509_certificate((out / "operator-admin" / "tls.crt").read_bytes())
    operator.verify_directly_issued_by(x509.load_pem_x509_certificate((out / "ca" / "ca.crt").read_bytes()))


def test_the_cluster_mounts_secrets_from_its_certificates_or_the_manifests() -> None:
    secrets = {"dayu-tls-monitor-edge-1": {"ca.crt": "CA", "tls.crt": "CERT", "tls.key": "KEY"}}
    spec = {
        "volumes": [
            {"name": "tls", "secret": {"secretName": "dayu-tls-monitor-edge-1"}},
            {
                "name": "some",
                "secret": {"secretName": "dayu-tls-monitor-edge-1", "items": [{"key": "ca.crt", "path": "root.pem"}]},
            },
            {"name": "absent", "secret": {"secretName": "nope", "optional": True}},
            {"name": "both", "projected": {"sources": [{"secret": {"name": "dayu-tls-monitor-edge-1"}}]}},
        ]
    }
    volumes = _volumes(spec, {}, secrets)
    assert volumes["tls"].files == secrets["dayu-tls-monitor-edge-1"]
    assert volumes["some"].files == {"root.pem": "CA"}
    assert volumes["absent"].files == {}
    assert volumes["both"].files == secrets["dayu-tls-monitor-edge-1"]
    with pytest.raises(RuntimeError, match="volume tls: no Secret 'dayu-tls-monitor-edge-1'"):
        _volumes({"volumes": spec["volumes"][:1]}, {}, {})

    # A Secret the manifests hold themselves is read from them; the cluster's own win.
    held = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "dayu-tls-monitor-edge-2"}}
    held["data"] = {"tls.crt": base64.b64encode(b"FROM MANIFEST").decode()}
    container = {"name": "monitor", "image": "dayu", "args": ["serve", "monitor"]}
    container["volumeMounts"] = [{"name": "tls", "mountPath": "/etc/dayu-tls"}]
    template = {
        "metadata": {"labels": {"app.kubernetes.io/component": "monitor"}},
        "spec": {
            "containers": [container],
            "volumes": [{"name": "tls", "secret": {"secretName": "dayu-tls-monitor-edge-2"}}],
        },
    }
    daemonset = {"kind": "DaemonSet", "metadata": {"name": "dayu-monitor"}, "spec": {"template": template}}
    found = pods([daemonset, held], ["edge-2"], image_paths(Path("/r"), Path("/b")), secrets)
    assert found[0].volumes["tls"].files == {"tls.crt": "FROM MANIFEST"}
    assert found[0].mounts == [("tls", "/etc/dayu-tls")]


def test_a_processor_on_triton_shows_triton_its_own_certificate(tmp_path: Path) -> None:
    tls = TlsSettings.in_directory(tmp_path)
    on_triton = {"backend": "triton", "triton": {"address": "127.0.0.1:50101"}}
    assert _with_tls(on_triton, tls)["triton"] == {"address": "127.0.0.1:50101", "tls": tls.model_dump()}
    assert _with_tls(on_triton, TlsSettings()) == on_triton  # plaintext
    assert _with_tls({"backend": "onnxruntime"}, tls) == {"backend": "onnxruntime"}
    own = {"backend": "triton", "triton": {"tls": {"ca_file": "x", "cert_file": "y", "key_file": "z"}}}
    assert _with_tls(own, tls) == own
