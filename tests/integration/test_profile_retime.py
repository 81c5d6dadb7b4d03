"""The validation's profile timed again on the machine it runs on (dayu.simulator.validation.retimed_profile):
the processors' times are measured now by the real processors, and the bytes and accuracy, which do not
depend on the machine, are kept from the profile given."""

from __future__ import annotations

from pathlib import Path

from dayu.mesh.model import CONFIGS
from dayu.simulator.costs import Profile
from dayu.simulator.profile import TIMED_FRAMES
from dayu.simulator.validation import retimed_profile


def test_a_retimed_profile_measures_processing_now_and_keeps_bytes_and_accuracy(tmp_path: Path) -> None:
    base = Profile.load(CONFIGS / "profile.yaml").data
    path = retimed_profile(CONFIGS / "experiment.yaml", CONFIGS / "profile.yaml", tmp_path, repeats=1)

    assert path == tmp_path / "profile.yaml"
    retimed = Profile.load(path).data
    assert retimed.frame_bytes == base.frame_bytes
    assert retimed.accuracy == base.accuracy
    assert retimed.task_overhead == base.task_overhead
    assert "timed again" in retimed.made_by and retimed.made_at != base.made_at
    assert sorted(retimed.processors) == sorted(base.processors)
    for name, processor in retimed.processors.items():
        # Timed now, once per rung and segment length, at the rungs and lengths the profile times.
        assert processor.measured != base.processors[name].measured
        assert {s.frames for s in processor.measured} == set(TIMED_FRAMES)
        assert all(s.repeats == 1 and s.seconds > 0 for s in processor.measured)
