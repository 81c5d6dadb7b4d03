"""The validation's profile timed again on the machine it runs on (dayu.simulator.validation.retimed_profile):
the processors' times are measured now by the real processors, and the bytes and accuracy, which do not
depend on the machine, are kept from the profile given."""

from __future__ import annotations

from pathlib import Path

from dayu.mesh.model import CONFIGS, load_mesh_config
from dayu.scheduler.knobs import resolutions
from dayu.simulator.costs import Profile
from dayu.simulator.profile import TIMED_FRAMES
from dayu.simulator.scenario import mesh_streams
from dayu.simulator.validation import retimed_profile


def test_a_retimed_profile_measures_processing_now_and_keeps_bytes_and_accuracy(tmp_path: Path) -> None:
    base = Profile.load(CONFIGS / "profile.yaml").data
    streams = mesh_streams(load_mesh_config(CONFIGS / "experiment.yaml"))
    ladder = {(r.width, r.height) for spec in streams for r in resolutions(spec.max_configuration.resolution)}
    assert (960, 540) in ladder
    path = retimed_profile(CONFIGS / "experiment.yaml", CONFIGS / "profile.yaml", tmp_path, repeats=1)

    assert path == tmp_path / "profile.yaml"
    retimed = Profile.load(path).data
    assert retimed.frame_bytes == base.frame_bytes
    assert retimed.accuracy == base.accuracy
    assert retimed.task_overhead == base.task_overhead
    assert "timed again" in retimed.made_by and retimed.made_at != base.made_at
    assert sorted(retimed.processors) == sorted(base.processors)
    for name, processor in retimed.processors.items():
        # Timed now, once per rung and segment length, at every rung of the ladder (the text detector
        # scales frames wider than 960 down: 960x540 costs it about what 1280x720 does, where a line
        # between 854x480 and 1280x720 says two thirds) and at the lengths the profile times.
        assert processor.measured != base.processors[name].measured
        assert {s.frames for s in processor.measured} == set(TIMED_FRAMES)
        assert {(s.width, s.height) for s in processor.measured} == ladder
        assert all(s.repeats == 1 and s.seconds > 0 for s in processor.measured)
