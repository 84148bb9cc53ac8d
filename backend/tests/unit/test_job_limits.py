from pathlib import Path

import pytest
import yaml

from archiver.config.job_limits import JOB_LIMIT_ENV, JobLimitError, job_limits

REPO = Path(__file__).resolve().parents[3]


def _dotenv() -> dict[str, str]:
    lines = (REPO / ".env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_the_limits_of_dot_env_are_read_and_match_the_defaults_of_prefect_yaml():
    deployments = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    limits = job_limits(_dotenv())
    assert limits == {
        "archive": deployments["datasets_archival"]["concurrency_limit"]["limit"],
        "retrieve": deployments["datasets_retrieval"]["concurrency_limit"]["limit"],
    }
    for name in ("datasets_archival", "datasets_retrieval"):
        assert deployments[name]["concurrency_limit"]["collision_strategy"] == "ENQUEUE"


@pytest.mark.parametrize("value", ["", "0", "-1", "two", "2.5", " 3"])
def test_a_limit_that_is_not_a_whole_number_of_at_least_one_is_refused_by_name_and_value(value):
    environ = {"ARCHIVAL_JOBS_LIMIT": "2", "RETRIEVAL_JOBS_LIMIT": value}
    with pytest.raises(JobLimitError) as refused:
        job_limits(environ)
    assert "RETRIEVAL_JOBS_LIMIT" in str(refused.value) and repr(value) in str(refused.value)
    assert ".env" in str(refused.value)


def test_every_limit_is_named_in_the_deploy_container_environment():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    environment = compose["services"]["prefect-flows-deployment"]["environment"]
    assert set(JOB_LIMIT_ENV.values()) <= set(environment)
