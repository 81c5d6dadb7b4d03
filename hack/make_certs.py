#!/usr/bin/env python3
"""Makes a test CA and the certificates of a mesh for mutual TLS (docs/security.md).

For every component on every node of a mesh file (dayu.mesh.plan: the instances, a node's processors
sharing one certificate, Triton where the mesh runs it) and an operator's client certificate, writes
OUT/COMPONENT-NODE/{ca.crt,tls.crt,tls.key} (CN COMPONENT.NODE, O dayu, DNS dayu-mesh), and the CA
itself in OUT/ca/ (its key too: keep it, or throw it away once the certificates are made). Optionally
prints the `kubectl create secret` commands of the Secrets the manifests mount (dayu-tls-COMPONENT-NODE,
type kubernetes.io/tls, with ca.crt), or writes them as YAML.

    .venv/bin/python hack/make_certs.py --mesh configs/cluster.yaml --out .dayu/tls
    .venv/bin/python hack/make_certs.py --out .dayu/tls --kubectl             # the commands, to run
    .venv/bin/python hack/make_certs.py --out .dayu/tls --secrets secrets.yaml  # kubectl apply -f it

A test CA: for production, issue the same identities from your own CA (cert-manager, Vault, ...).
"""

from __future__ import annotations

import argparse
import base64
import shlex
import sys
from pathlib import Path

import yaml

from dayu.mesh.model import load_mesh_config
from dayu.mesh.plan import certificate_holders
from dayu.runtime.certs import Authority, issue, make_ca
from dayu.runtime.errors import DayuError
from dayu.runtime.tls import CA_FILE, CERT_FILE, KEY_FILE, OPERATOR, secret_name

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MESH = ROOT / "configs" / "embedded.yaml"
NAMESPACE = "dayu"  # kustomize/base/namespace.yaml
SCRIPT = "hack/make_certs.py"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mesh", type=Path, default=DEFAULT_MESH, help="mesh file (default configs/embedded.yaml)")
    parser.add_argument("--out", type=Path, required=True, help="folder of the CA and one subfolder per certificate")
    parser.add_argument("--operator", default="admin", help="the operator certificate's name: CN operator.NAME")
    parser.add_argument(
        "--reuse-ca", action="store_true", help="sign with the CA already in OUT/ca (else a new CA is made)"
    )
    parser.add_argument("--kubectl", action="store_true", help="print the kubectl commands that create the Secrets")
    parser.add_argument("--secrets", type=Path, help="write the Secrets as YAML to this file (- for stdout)")
    parser.add_argument("--namespace", default=NAMESPACE, help=f"the Secrets' namespace (default {NAMESPACE})")
    return parser.parse_args(argv)


def secret(name: str, namespace: str, files: dict[str, bytes]) -> dict[str, object]:
    """A kubernetes.io/tls Secret holding tls.crt, tls.key and ca.crt."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "dayu"}},
        "type": "kubernetes.io/tls",
        "data": {key: base64.b64encode(data).decode() for key, data in sorted(files.items())},
    }


def kubectl_command(name: str, namespace: str, folder: Path) -> str:
    files = [f"--from-file={key}={folder / key}" for key in (CA_FILE, CERT_FILE, KEY_FILE)]
    return shlex.join(
        ["kubectl", "-n", namespace, "create", "secret", "generic", name, "--type=kubernetes.io/tls", *files]
    )


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        config = load_mesh_config(args.mesh if args.mesh.exists() else ROOT / args.mesh)
    except (DayuError, ValueError) as error:
        print(f"{SCRIPT}: {error}", file=sys.stderr)
        return 2
    holders = [*certificate_holders(config), (OPERATOR, args.operator)]
    ca = Authority.load(args.out / "ca") if args.reuse_ca else make_ca()
    if not args.reuse_ca:
        ca.write(args.out / "ca")
    documents, commands = [], []
    for component, node in holders:
        folder = args.out / f"{component}-{node}"
        issued = issue(ca, component, node)
        issued.write(folder)
        name = secret_name(component, node)
        documents.append(secret(name, args.namespace, issued.files()))
        commands.append(kubectl_command(name, args.namespace, folder))
    print(f"{SCRIPT}: {len(holders)} certificates of CA {args.out / 'ca' / CA_FILE} in {args.out}", file=sys.stderr)
    if args.kubectl:
        print("\n".join(commands))
    if args.secrets is not None:
        text = yaml.safe_dump_all(documents, sort_keys=False)
        if str(args.secrets) == "-":
            sys.stdout.write(text)
        else:
            args.secrets.write_text(text)
            args.secrets.chmod(0o600)
            print(f"{SCRIPT}: wrote {len(documents)} Secrets to {args.secrets}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
