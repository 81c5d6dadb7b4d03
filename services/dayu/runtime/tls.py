"""Mutual TLS between the components of a mesh: who may connect, and who the caller is.

Every component of a mesh with TLS has a certificate of the mesh's private CA (dayu.runtime.certs
makes them) whose subject names it: CN `COMPONENT.NODE` (`monitor.edge-1`, `scheduler.cloud`; every
processor is `processor.NODE`, the operator's tools `operator.ANYTHING`), O `dayu`, and the DNS name
`dayu-mesh`. Servers take only clients with such a certificate (require_client_auth); clients take
only servers whose certificate is of the CA and names `dayu-mesh`, whatever address they dial (the
CA is the mesh's own: that proves the server is a member). Then a server knows who calls
(`peer_identity`), and refuses a caller that claims to be another node (`require_node`) or calls what
its component has no business calling (`require_component`), with PERMISSION_DENIED.

Settings: `tls.ca_file`, `tls.cert_file`, `tls.key_file`, all three or none (plaintext, the embedded
mesh on loopback). In Kubernetes they are /etc/dayu-tls/{ca.crt,tls.crt,tls.key}, from the Secret
`dayu-tls-COMPONENT-NODE` (`secret_name`)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pydantic

from dayu.runtime.errors import InvalidArgument, PermissionDenied

MESH_NAME = "dayu-mesh"  # the DNS name in every certificate of the mesh; what clients verify
ORGANIZATION = "dayu"
CA_NAME = "dayu-mesh-ca"
OPERATOR = "operator"  # the operator's tools (dayu cluster's harness, an admin's grpcurl): any node
KUBERNETES_DIR = "/etc/dayu-tls"  # where the manifests mount a component's Secret
CA_FILE, CERT_FILE, KEY_FILE = "ca.crt", "tls.crt", "tls.key"  # the keys of a kubernetes.io/tls Secret (+ CA)
TARGET_NAME_OPTION = ("grpc.ssl_target_name_override", MESH_NAME)
FIELDS = ("ca_file", "cert_file", "key_file")


def secret_name(component: str, node: str) -> str:
    """The Kubernetes Secret holding a component's certificate on a node: dayu-tls-monitor-edge-1."""
    return f"dayu-tls-{component}-{node}"


def common_name(component: str, node: str) -> str:
    if not component or "." in component or not node:
        raise ValueError(f"a certificate names a component without dots and a node, got {component!r}, {node!r}")
    return f"{component}.{node}"


class TlsSettings(pydantic.BaseModel):
    """The component's certificate, its key and the mesh's CA (PEM files): all three for mutual TLS,
    none for plaintext."""

    model_config = pydantic.ConfigDict(extra="forbid")

    ca_file: str = pydantic.Field("", description="the mesh's CA certificate (PEM); empty: plaintext")
    cert_file: str = pydantic.Field("", description="this component's certificate, CN COMPONENT.NODE (PEM)")
    key_file: str = pydantic.Field("", description="the private key of cert_file (PEM)")

    @pydantic.model_validator(mode="after")
    def _all_or_none(self) -> TlsSettings:
        given = [name for name in FIELDS if getattr(self, name)]
        if given and len(given) < len(FIELDS):
            missing = [name for name in FIELDS if name not in given]
            raise ValueError(
                f"{' and '.join(f'tls.{name}' for name in missing)} empty while "
                f"{' and '.join(f'tls.{name}' for name in given)} set: mutual TLS needs all three files "
                "(or none, for plaintext)"
            )
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.ca_file)

    @classmethod
    def in_directory(cls, folder: Path | str) -> TlsSettings:
        """The files as the Secret's volume holds them: FOLDER/ca.crt, tls.crt, tls.key."""
        folder = Path(folder)
        return cls(ca_file=str(folder / CA_FILE), cert_file=str(folder / CERT_FILE), key_file=str(folder / KEY_FILE))

    def material(self) -> TlsMaterial:
        """The three files' contents; InvalidArgument naming the setting of one that cannot be read."""
        if not self.enabled:
            raise ValueError("TLS is not configured (tls.ca_file, tls.cert_file, tls.key_file are empty)")
        contents = []
        for name, holds in zip(FIELDS, ("CERTIFICATE", "CERTIFICATE", "PRIVATE KEY"), strict=True):
            path = getattr(self, name)
            try:
                data = Path(path).read_bytes()
            except OSError as error:
                raise InvalidArgument(f"tls.{name}", f"a readable PEM file, got {path!r} ({error.strerror})") from None
            # gRPC would only say that it cannot bind, or fail every handshake.
            if b"-----BEGIN " not in data or holds.encode() not in data:
                raise InvalidArgument(f"tls.{name}", f"a PEM file of a {holds.lower()}, got {path!r}, which holds none")
            contents.append(data)
        return TlsMaterial(*contents)


@dataclass(frozen=True)
class TlsMaterial:
    ca: bytes
    cert: bytes
    key: bytes


def server_credentials(settings: TlsSettings) -> grpc.ServerCredentials:
    """A server that shows its certificate and takes only clients with a certificate of the CA."""
    material = settings.material()
    return grpc.ssl_server_credentials(
        [(material.key, material.cert)], root_certificates=material.ca, require_client_auth=True
    )


def channel_credentials(settings: TlsSettings) -> grpc.ChannelCredentials:
    """A client that shows its certificate and takes only servers with a certificate of the CA."""
    material = settings.material()
    return grpc.ssl_channel_credentials(
        root_certificates=material.ca, private_key=material.key, certificate_chain=material.cert
    )


def open_channel(
    address: str,
    settings: TlsSettings | None,
    options: Sequence[tuple[str, Any]] = (),
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.aio.Channel:
    """A channel to a mesh member: mutual TLS, verifying the server as `dayu-mesh`, when `settings`
    are enabled (`credentials`, made once by the caller, spares reading the files again); else
    plaintext."""
    if settings is None or not settings.enabled:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(
        address,
        credentials or channel_credentials(settings),
        options=[*options, TARGET_NAME_OPTION],
    )


@dataclass(frozen=True)
class Identity:
    """Who a certificate says its holder is: CN COMPONENT.NODE (the node may hold dots, the component not)."""

    component: str
    node: str

    @classmethod
    def parse(cls, name: str) -> Identity:
        component, dot, node = name.partition(".")
        if not dot or not component or not node:
            raise ValueError(f"certificate CN {name!r} is not COMPONENT.NODE")
        return cls(component, node)

    def __str__(self) -> str:
        return f"{self.component}.{self.node}"


def peer_identity(context: Any) -> Identity | None:
    """The caller's identity from its certificate; None when the server is plaintext (no TLS, no
    identity: the embedded mesh on loopback). A TLS caller whose certificate names no COMPONENT.NODE
    is refused (PERMISSION_DENIED)."""
    auth = context.auth_context() or {}
    names = auth.get("x509_common_name") or []
    if not names:
        if (auth.get("transport_security_type") or [b""])[0] == b"ssl":
            raise PermissionDenied("the caller's certificate has no common name (COMPONENT.NODE)")
        return None
    name = names[0].decode(errors="replace") if isinstance(names[0], bytes) else str(names[0])
    try:
        return Identity.parse(name)
    except ValueError as error:
        raise PermissionDenied(str(error)) from None


def require_component(context: Any, components: Collection[str], what: str) -> Identity | None:
    """The caller's identity, when it is one of `components` (or the server is plaintext); else
    PERMISSION_DENIED naming what was called and who called."""
    identity = peer_identity(context)
    if identity is not None and identity.component not in components:
        allowed = ", ".join(sorted(components))
        raise PermissionDenied(f"{what}: only {allowed} may call it; the caller's certificate is {identity}")
    return identity


def require_node(
    context: Any, claimed_node: str, field: str, *, any_node: Collection[str] = (OPERATOR,)
) -> Identity | None:
    """The caller's identity, when its certificate is of the node it claims in `field` (or of a
    component in `any_node`, which acts for every node, or the server is plaintext); else
    PERMISSION_DENIED naming the field, the node claimed and the certificate."""
    identity = peer_identity(context)
    if identity is not None and identity.component not in any_node and identity.node != claimed_node:
        raise PermissionDenied(
            f"{field}: node {claimed_node!r} claimed by a certificate of node {identity.node!r} ({identity})"
        )
    return identity
