"""Every RPC of every service, fuzzed on one embedded mesh (dayu.testing.fuzz; docs/testing.md,
"Fuzzing"): near-valid, random and garbage requests each get an answer a caller can act on, within
the deadline, with details no longer than the server's cut; afterwards the mesh still answers right. Bounded and
deterministic here; hack/fuzz.py is the long campaign."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from dayu.testing import fuzz

RPCS = fuzz.rpcs()
STRATEGIES = fuzz.Strategies(fuzz.Limits(max_bytes=4096))
# Examples per RPC; DAYU_FUZZ_EXAMPLES raises it for a longer run of this suite.
EXAMPLES = int(os.environ.get("DAYU_FUZZ_EXAMPLES", "40"))
settings.register_profile(
    "dayu-fuzz",
    max_examples=EXAMPLES,
    derandomize=True,  # the same examples on every run: CI is deterministic
    database=None,
    deadline=None,  # the calls have deadlines of their own
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[fuzz.FuzzMesh]:
    mesh = fuzz.FuzzMesh(Path(tmp_path_factory.mktemp("fuzz-mesh")))
    mesh.start()
    yield mesh
    assert mesh.stop() == 0, f"the mesh did not stop cleanly; its log:\n{mesh.log.read_text()[-4000:]}"


def test_the_mesh_serves_every_service_of_the_contracts(mesh: fuzz.FuzzMesh) -> None:
    assert len(RPCS) >= 30
    assert fuzz.unserved(mesh, RPCS) == []


@pytest.mark.parametrize("rpc", RPCS, ids=lambda rpc: rpc.name)
def test_fuzzed_requests_get_an_answer_a_caller_can_act_on(mesh: fuzz.FuzzMesh, rpc: fuzz.Rpc) -> None:
    @settings(settings.get_profile("dayu-fuzz"))
    @given(fuzz.requests(rpc, STRATEGIES))
    def call(request: fuzz.Request) -> None:
        found = fuzz.judge(mesh.call(rpc, request))
        assert not found, "\n".join(map(str, found))

    call()


def test_after_the_fuzz_the_mesh_still_answers_right(mesh: fuzz.FuzzMesh) -> None:
    found = fuzz.check_mesh(mesh, RPCS)
    assert not found, "\n".join(map(str, found))
