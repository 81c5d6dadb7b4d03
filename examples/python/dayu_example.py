"""Calls a Dayu mesh with the Python dataclass client (gen/betterproto: betterproto2 messages, async
grpclib stubs): lists the pipelines, reads the scheduler's statistics, sets a stream's policy and
follows the stream's decisions for a few seconds. Its last line is one JSON object of what it saw.

    pip install betterproto2==0.10.0 grpclib==0.4.9
    PYTHONPATH=gen/betterproto python examples/python/dayu_example.py \\
        --backend 127.0.0.1:PORT --scheduler 127.0.0.1:PORT --stream cam-1 --token TOKEN

Every call carries `authorization: Bearer TOKEN` (--token, by default $DAYU_TOKEN): the backend's
calls need a token, the scheduler's SetPolicy an admin one (`dayu up` writes the mesh's tokens to
.dayu/tokens.yaml).

Mutual TLS (the mesh's CA, a certificate of it and its key; the servers are verified as `dayu-mesh`
whatever address is dialled): add --ca ca.crt --cert tls.crt --key tls.key [--server-name dayu-mesh].
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
from pathlib import Path
from typing import Any

try:
    import grpclib
    import grpclib.exceptions
    from grpclib.client import Channel
    from grpclib.config import Configuration
except ImportError as missing:
    sys.exit(f"error: {missing}; install the client's runtime: pip install betterproto2==0.10.0 grpclib==0.4.9")

try:
    from dayu_client.dayu import v1
    from dayu_client.google.protobuf import Struct
except ImportError:  # run from a checkout without PYTHONPATH: use the repository's gen/betterproto
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "gen" / "betterproto"))
    try:
        from dayu_client.dayu import v1
        from dayu_client.google.protobuf import Struct
    except ImportError as missing:
        sys.exit(
            f"error: {missing}; put the generated client on the path (PYTHONPATH=gen/betterproto) and install "
            "its runtime: pip install betterproto2==0.10.0 grpclib==0.4.9"
        )

MESH_NAME = "dayu-mesh"  # the DNS name in every certificate of a mesh
CALL_TIMEOUT_S = 10.0
TOKEN_ENV = "DAYU_TOKEN"  # where --token comes from when it is not given
TOKENS_HINT = "dayu up writes the mesh's tokens to .dayu/tokens.yaml"


def token_joined(argv: list[str]) -> list[str]:
    """`--token VALUE` as `--token=VALUE`: a token may begin with "-" (a random one does, now and then),
    which argparse would take for an option."""
    joined, rest = [], iter(argv)
    for arg in rest:
        value = next(rest, None) if arg == "--token" else None
        joined.append(arg if value is None else f"--token={value}")
    return joined


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", required=True, metavar="HOST:PORT", help="the backend's gRPC address")
    parser.add_argument("--scheduler", required=True, metavar="HOST:PORT", help="the scheduler's gRPC address")
    parser.add_argument("--stream", required=True, metavar="STREAM_ID", help="a registered stream")
    parser.add_argument(
        "--token",
        help=f"the operator API's bearer token, an admin one for SetPolicy (default ${TOKEN_ENV}; {TOKENS_HINT})",
    )
    parser.add_argument("--watch-seconds", type=float, default=3.0, help="how long to follow decisions (default 3)")
    parser.add_argument("--policy", default="fixed", help="the policy to set (default fixed)")
    parser.add_argument("--ca", help="the mesh's CA certificate (PEM): mutual TLS")
    parser.add_argument("--cert", help="a certificate of the mesh's CA (PEM), for mutual TLS")
    parser.add_argument("--key", help="the private key of --cert (PEM)")
    parser.add_argument(
        "--server-name",
        default=MESH_NAME,
        help=f"the name the servers' certificates are verified for, and the TLS SNI (default {MESH_NAME})",
    )
    args = parser.parse_args(token_joined(sys.argv[1:] if argv is None else argv))
    tls = [args.ca, args.cert, args.key]
    if any(tls) and not all(tls):
        parser.error("mutual TLS needs all of --ca, --cert and --key")
    args.token = args.token or os.environ.get(TOKEN_ENV, "")
    if not args.token:
        parser.error(
            f"no token: the backend's calls and SetPolicy need one; give --token or set {TOKEN_ENV} "
            f"(an admin token of the mesh: {TOKENS_HINT})"
        )
    return args


def tls_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    """Verifies servers against the mesh's CA and shows them our certificate; HTTP/2 by ALPN (gRPC)."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    except (OSError, ssl.SSLError) as error:
        raise ValueError(f"--ca {ca}: not a readable PEM CA certificate ({error})") from None
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        raise ValueError(f"--cert {cert} --key {key}: not a readable PEM certificate and its key ({error})") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    return context


def open_channel(address: str, args: argparse.Namespace) -> Channel:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address!r} is not HOST:PORT")
    host = host.strip("[]")  # [::1]:50051
    if not args.ca:
        return Channel(host, int(port))
    # Verify the certificate for --server-name (and send it as SNI), whatever address is dialled.
    return Channel(
        host,
        int(port),
        ssl=tls_context(args.ca, args.cert, args.key),
        config=Configuration(ssl_target_name_override=args.server_name),
    )


class Step:
    """What the program is doing, for error messages."""

    now = "starting"


async def list_pipelines(backend: v1.BackendServiceStub) -> list[str]:
    names: list[str] = []
    token, seen = "", set()
    while True:
        page = await backend.list_pipelines(v1.ListPipelinesRequest(page_size=2, page_token=token))
        names += [pipeline.name for pipeline in page.pipelines]
        print(f"pipelines page: {[pipeline.name for pipeline in page.pipelines]}")
        token = page.next_page_token
        if not token:
            return names
        if token in seen:
            raise RuntimeError(f"ListPipelines returned page token {token!r} twice")
        seen.add(token)


async def scheduler_streams(scheduler: v1.SchedulerServiceStub) -> list[str]:
    streams: list[str] = []
    token, seen = "", set()
    while True:
        page = await scheduler.get_scheduler_stats(v1.GetSchedulerStatsRequest(page_size=1, page_token=token))
        for stats in page.streams:
            streams.append(stats.stream_id)
            print(f"scheduler stats: stream {stats.stream_id}")
        print(f"scheduler stats page: {len(page.streams)} stream(s), {page.spans_received} span(s) received")
        token = page.next_page_token
        if not token:
            return streams
        if token in seen:
            raise RuntimeError(f"GetSchedulerStats returned page token {token!r} twice")
        seen.add(token)


async def watch(scheduler: v1.SchedulerServiceStub, stream: str, seconds: float) -> tuple[int, int]:
    """Decisions received in `seconds` (the first, the current one, at once) and the last one's version."""
    count, last_version = 0, 0
    try:
        async with asyncio.timeout(seconds):  # then the call is cancelled (the server sees RST_STREAM)
            request = v1.WatchDecisionsRequest(stream_id=stream)
            async for response in scheduler.watch_decisions(request, timeout=seconds + CALL_TIMEOUT_S):
                decision = response.decision or v1.Decision()
                count += 1
                last_version = decision.version
                print(f"decision: stream {decision.stream_id} version {decision.version} policy {decision.policy}")
    except TimeoutError:
        pass
    return count, last_version


async def run(args: argparse.Namespace) -> dict[str, Any]:
    backend_channel = open_channel(args.backend, args)
    scheduler_channel = open_channel(args.scheduler, args)
    try:
        # The token rides as metadata on every call of both stubs. It travels in clear on a plaintext
        # connection: use TLS anywhere but loopback.
        auth = {"authorization": f"Bearer {args.token}"}
        backend = v1.BackendServiceStub(backend_channel, timeout=CALL_TIMEOUT_S, metadata=auth)
        scheduler = v1.SchedulerServiceStub(scheduler_channel, timeout=CALL_TIMEOUT_S, metadata=auth)

        Step.now = f"BackendService/ListPipelines on {args.backend}"
        pipelines = await list_pipelines(backend)
        print(f"pipelines: {pipelines}")

        Step.now = f"SchedulerService/GetSchedulerStats on {args.scheduler}"
        streams = await scheduler_streams(scheduler)

        Step.now = f"SchedulerService/SetPolicy on {args.scheduler}"
        reply = await scheduler.set_policy(
            v1.SetPolicyRequest(stream_id=args.stream, policy=v1.PolicySpec(name=args.policy, params=Struct()))
        )
        decision = reply.decision or v1.Decision()
        print(f"policy of {args.stream} set to {args.policy}: decision version {decision.version} ({decision.policy})")

        Step.now = f"SchedulerService/WatchDecisions on {args.scheduler}"
        decisions, last_version = await watch(scheduler, args.stream, args.watch_seconds)
        print(f"followed {args.stream} for {args.watch_seconds:g}s: {decisions} decision(s)")
        return {
            "pipelines": pipelines,
            "stats_streams": streams,
            "policy": args.policy,
            "decisions": decisions,
            "last_version": last_version,
        }
    finally:
        backend_channel.close()
        scheduler_channel.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = asyncio.run(run(args))
    except grpclib.GRPCError as error:
        hint = {
            grpclib.Status.UNAUTHENTICATED: f" (is --token or ${TOKEN_ENV} one of the mesh's tokens? {TOKENS_HINT})",
            grpclib.Status.PERMISSION_DENIED: " (SetPolicy needs an admin token)",
        }.get(error.status, "")
        print(f"error: {Step.now}: {error.status.name}: {error.message}{hint}", file=sys.stderr)
        return 1
    except ssl.SSLError as error:
        print(f"error: {Step.now}: TLS handshake failed: {error}", file=sys.stderr)
        return 1
    except (grpclib.exceptions.StreamTerminatedError, ConnectionResetError) as error:
        hint = " (was the certificate of --cert refused? it must be of the mesh's CA)" if args.ca else ""
        print(f"error: {Step.now}: the server ended the connection: {error}{hint}", file=sys.stderr)
        return 1
    except (OSError, grpclib.exceptions.ProtocolError, RuntimeError) as error:
        print(f"error: {Step.now}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
