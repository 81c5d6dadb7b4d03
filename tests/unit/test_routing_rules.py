"""The controller's fork and join rules on a task's DAG (pure functions)."""

from __future__ import annotations

from dayu.controller.core import join_stage, merge_into, ready_stages
from dayu.v1 import task_pb2

from conftest import fork_join_pipeline, make_task

DONE = task_pb2.STAGE_STATE_DONE


def names(stages: list[task_pb2.TaskStage]) -> list[str]:
    return [s.spec.name for s in stages]


def finish(task: task_pb2.Task, *stage_names: str) -> None:
    for stage in task.dag.stages:
        if stage.spec.name in stage_names:
            stage.state = DONE
            stage.results.add(frame_index=0)


def test_original_task_forks_after_detect() -> None:
    task = make_task(fork_join_pipeline())
    assert names(ready_stages(task)) == ["detect"]
    finish(task, "detect")
    assert names(ready_stages(task)) == ["classify", "count"]


def test_a_copy_stays_in_its_branch_and_waits_at_the_join() -> None:
    copy = make_task(fork_join_pipeline())
    finish(copy, "detect")
    copy.branch.append("classify")
    assert names(ready_stages(copy)) == ["classify"]
    finish(copy, "classify")
    assert ready_stages(copy) == []
    join = join_stage(copy)
    assert join is not None and join.spec.name == "merge"


def test_merging_copies_completes_the_join() -> None:
    left, right = make_task(fork_join_pipeline()), make_task(fork_join_pipeline())
    for copy, branch in ((left, "classify"), (right, "count")):
        finish(copy, "detect", branch)
        copy.branch.append(branch)
    merge_into(left, right)
    assert sorted(left.branch) == ["classify", "count"]
    assert names(ready_stages(left)) == ["merge"]
