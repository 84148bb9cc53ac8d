import pytest

from archiver.flows.recovery import _flow_run_id, crash_retries_so_far
from archiver.flows.serve import deployment_triggers


def test_crash_retries_are_counted_from_the_highest_tag():
    assert crash_retries_so_far(["scicat-job:1", "job-type:archive"]) == 0
    assert crash_retries_so_far(["crash-retry:1", "crash-retry:2", "crash-retry:x"]) == 2


def test_flow_run_id_taken_from_event_resource_or_plain():
    plain = "3383ac77-8e1e-48f1-bbf4-ae6999094295"
    assert str(_flow_run_id(f"prefect.flow-run.{plain}")) == plain
    assert str(_flow_run_id(plain)) == plain
    with pytest.raises(ValueError, match="'prefect.flow-run.nope' is not a flow run id"):
        _flow_run_id("prefect.flow-run.nope")


def test_recovery_trigger_of_prefect_yaml_reacts_to_crashed_and_cancelled_job_runs_only():
    [trigger] = deployment_triggers("job_recovery")
    assert trigger.expect == {"prefect.flow-run.Crashed", "prefect.flow-run.Cancelled"}
    assert trigger.match_related.model_dump()["prefect.resource.name"] == [
        "archive_datasetlist",
        "retrieve_datasetlist",
    ]
    assert trigger.parameters == {"flow_run_id": "{{ event.resource.id }}"}
    with pytest.raises(ValueError, match="no deployment named 'nope'"):
        deployment_triggers("nope")
