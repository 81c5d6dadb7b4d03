"""The three generated clients' examples, checked alike: examples/go (protoc-gen-go and grpc-go, built
with Debian's Go), gen/ts/examples (protoc-gen-es and Connect for Node.js) and examples/python
(betterproto2 and grpclib). Each runs against the live mesh (its token from $DAYU_TOKEN), and with
mutual TLS against stand-in servers that check the token and record what it sent (--token); and fails
as it should: no token, a token the mesh does not know, a read-only token for SetPolicy, a refused
certificate, a wrong server name, a usage error, nothing listening."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf import json_format

from clients.support import (
    PIPELINES,
    STREAMS,
    TOKEN_ENV,
    Example,
    LiveMesh,
    StandIns,
    assert_live_result,
    last_json,
    run_example,
    tls_args,
)

# A cold Go build (grpc compiled into an empty GOCACHE: 8-18 s on two busy cores) or `npm ci` happens
# in the setup of the first test of its language.
pytestmark = pytest.mark.timeout(300)

# What each example says on stderr when it fails (each exits 1; none prints its JSON line).
UNAUTHENTICATED = {  # the mesh's backend does not know the token
    "go": ["BackendService/ListPipelines at", "code = Unauthenticated", "ListPipelines needs a valid token"],
    "ts": ["dayu-example: error: Unauthenticated:", "ListPipelines needs a valid token"],
    "python": ["BackendService/ListPipelines on", "UNAUTHENTICATED", "ListPipelines needs a valid token"],
}
READ_ONLY = {  # SetPolicy with a read-only token
    "go": ["SchedulerService/SetPolicy(cam-1, fixed) at", "code = PermissionDenied", "SetPolicy needs an admin token"],
    "ts": ["dayu-example: error: PermissionDenied:", "SetPolicy needs an admin token"],
    "python": ["SchedulerService/SetPolicy on", "PERMISSION_DENIED", "SetPolicy needs an admin token"],
}
UNREACHABLE = {
    "go": ["BackendService/ListPipelines at 127.0.0.1:1", "Unavailable", "connection refused"],
    "ts": ["dayu-example: error: Unavailable", "ECONNREFUSED 127.0.0.1:1"],
    "python": ["BackendService/ListPipelines on 127.0.0.1:1", "ConnectionRefusedError"],
}
REFUSED = {  # the servers refuse the client's certificate (of another CA)
    "go": ["BackendService/ListPipelines at", "Unavailable"],
    "ts": ["dayu-example: error: Canceled"],  # the server ends the handshake; Node says no more than that
    "python": ["BackendService/ListPipelines on", "was the certificate of --cert refused?"],
}
UNTRUSTED = {  # the client does not trust the servers (of another CA than --ca)
    "go": ["BackendService/ListPipelines at", "x509: certificate signed by unknown authority"],
    "ts": ["dayu-example: error: Internal: unable to verify the first certificate"],
    "python": ["BackendService/ListPipelines on", "TLS handshake failed", "CERTIFICATE_VERIFY_FAILED"],
}
WRONG_NAME = {  # the servers' certificates are for dayu-mesh
    "go": ["BackendService/ListPipelines at", "certificate is valid for dayu-mesh, not not-the-mesh"],
    "ts": ["dayu-example: error: Internal", "not-the-mesh", "DNS:dayu-mesh"],
    "python": ["BackendService/ListPipelines on", "Hostname mismatch", "not valid for 'not-the-mesh'"],
}


def assert_failed(example: Example, code: int, out: str, err: str, expected: dict[str, list[str]]) -> None:
    assert code == 1, f"{example.language} example exited {code}:\n{out}\n{err}"
    assert not out.rstrip().endswith("}"), out  # no result line
    for part in expected[example.language]:
        assert part in err, f"{part!r} not in the {example.language} example's stderr:\n{err}"


async def test_against_the_mesh(example: Example, mesh: LiveMesh) -> None:
    code, out, err = await run_example(
        example, "--backend", mesh.backend, "--scheduler", mesh.scheduler, "--stream", mesh.stream,
        "--watch-seconds", "2", *tls_args(mesh.tls),
        token_env=mesh.admin_token,  # $DAYU_TOKEN, the default of --token
    )  # fmt: skip
    assert code == 0, f"the {example.language} example failed ({code}):\n{out}\n{err}"
    assert_live_result(last_json(out, err), mesh.stream)


async def test_unauthenticated_with_a_token_the_mesh_does_not_know(example: Example, mesh: LiveMesh) -> None:
    code, out, err = await run_example(
        example, "--backend", mesh.backend, "--scheduler", mesh.scheduler, "--stream", mesh.stream,
        "--token", "not-a-token-of-this-mesh", *tls_args(mesh.tls),
        token_env=mesh.admin_token,  # --token wins over $DAYU_TOKEN
    )  # fmt: skip
    assert_failed(example, code, out, err, UNAUTHENTICATED)
    assert f"--token or ${TOKEN_ENV}" in err, err  # the hint where tokens are


async def test_without_a_token(example: Example, tls_stand_ins: StandIns) -> None:
    """No --token and no $DAYU_TOKEN: a usage error up front, before any call."""
    served = tls_stand_ins
    code, out, err = await run_example(example, *served.args(*tls_args(served.operator), role=None))
    assert code == 2, f"{example.language} example exited {code}:\n{out}\n{err}"
    assert not out.rstrip().endswith("}"), out
    for part in ("no token", "--token", TOKEN_ENV, "tokens.yaml"):
        assert part in err, f"{part!r} not in the {example.language} example's stderr:\n{err}"
    assert not served.seen.authorization  # nothing was called


async def test_read_only_token_refused_for_set_policy(example: Example, tls_stand_ins: StandIns) -> None:
    served = tls_stand_ins
    code, out, err = await run_example(example, *served.args(*tls_args(served.operator), role="read"))
    assert_failed(example, code, out, err, READ_ONLY)
    assert served.seen.pipeline_pages and served.seen.stats_pages  # a read-only token reads
    assert not served.seen.policies


async def test_with_mutual_tls(example: Example, tls_stand_ins: StandIns) -> None:
    served = tls_stand_ins
    code, out, err = await run_example(
        example, *served.args("--watch-seconds", "1", "--policy", "feedback_control", *tls_args(served.operator))
    )
    assert code == 0, f"the {example.language} example failed ({code}):\n{out}\n{err}"
    assert last_json(out, err) == {
        "pipelines": PIPELINES,
        "stats_streams": STREAMS,
        "policy": "feedback_control",
        "decisions": 2,
        "last_version": 3,
    }
    seen = served.seen
    # Every page, by its token (the scheduler's pages are of two whatever the client asked for).
    assert [(page.page_size, page.page_token) for page in seen.pipeline_pages] == [(2, ""), (2, "2")]
    assert [page.page_token for page in seen.stats_pages] == ["", "2"]
    assert seen.peers == {"operator.example"}  # the client certificate was shown, on every call
    bearer = f"Bearer {served.admin_token}"  # and the token was sent on every call
    assert seen.authorization == {
        "ListPipelines": [bearer, bearer],
        "GetSchedulerStats": [bearer, bearer],
        "SetPolicy": [bearer],
        "WatchDecisions": [bearer],
    }
    [policy] = seen.policies
    assert policy.stream_id == STREAMS[0]
    assert policy.policy.name == "feedback_control"
    assert policy.policy.HasField("params")  # an empty Struct, present
    assert json_format.MessageToDict(policy.policy.params) == {}
    await asyncio.wait_for(seen.watch_cancelled.wait(), 5)  # the watch was ended, not left open


@pytest.mark.parametrize("stranger", ["client", "servers"])
async def test_refused_with_a_stranger_certificate(example: Example, tls_stand_ins: StandIns, stranger: str) -> None:
    served = tls_stand_ins
    if stranger == "client":  # the servers do not trust the client: its certificate is of another CA
        tls = ["--ca", str(served.operator.ca), "--cert", str(served.stranger.cert), "--key", str(served.stranger.key)]
        expected = REFUSED
    else:  # the client does not trust the servers: its --ca is another
        tls = tls_args(served.stranger)
        expected = UNTRUSTED
    code, out, err = await run_example(example, *served.args(*tls))
    assert_failed(example, code, out, err, expected)
    assert not served.seen.pipeline_pages


async def test_wrong_server_name(example: Example, tls_stand_ins: StandIns) -> None:
    served = tls_stand_ins
    code, out, err = await run_example(
        example, *served.args(*tls_args(served.operator), "--server-name", "not-the-mesh")
    )
    assert_failed(example, code, out, err, WRONG_NAME)
    assert not served.seen.pipeline_pages


async def test_usage_error(example: Example) -> None:
    code, out, err = await run_example(example, "--backend", "127.0.0.1:1")
    assert code == 2, f"{code}:\n{out}\n{err}"
    assert "required" in err and "--scheduler" in err and "--stream" in err, err


async def test_unreachable_server(example: Example) -> None:
    code, out, err = await run_example(
        example, "--backend", "127.0.0.1:1", "--scheduler", "127.0.0.1:1", "--stream", "cam-1", "--watch-seconds", "1",
        "--token", "a-token-never-sent-anywhere",
    )  # fmt: skip
    assert_failed(example, code, out, err, UNREACHABLE)
