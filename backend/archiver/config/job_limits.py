"""Apply the jobs-at-once limits of .env to the archival and retrieval deployments.

Run by backend/docker/deploy-flows.sh right after `prefect deploy`: Prefect validates prefect.yaml
before it fills `{{ $NAME }}`, so a deployment's concurrency limit cannot come from the environment
there. prefect.yaml keeps the defaults (also ENQUEUE, so runs over the limit wait); this sets the
limits the operator chose.

    python -m archiver.config.job_limits [--check]   (--check: only validate the values)
"""

from __future__ import annotations

import os
import sys

from archiver.errors import ArchiverError

JOB_LIMIT_ENV = {"archive": "ARCHIVAL_JOBS_LIMIT", "retrieve": "RETRIEVAL_JOBS_LIMIT"}


class JobLimitError(ArchiverError, ValueError):
    pass


def job_limits(environ=None) -> dict[str, int]:
    """The limit per job type from the environment, or a JobLimitError naming the variable and its value."""
    environ = os.environ if environ is None else environ
    limits = {}
    for job_type, name in JOB_LIMIT_ENV.items():
        value = environ.get(name, "")
        if not value.isdecimal() or int(value) < 1:
            raise JobLimitError(
                f"{name} is {value!r}; set it in .env to the most {job_type} jobs that may run "
                f"at once across all workers (a whole number, 1 or more), then deploy again"
            )
        limits[job_type] = int(value)
    return limits


def apply_job_limits(limits: dict[str, int]) -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import DeploymentUpdate

    from archiver.config.deployments import DEPLOYMENT_NAMES

    with get_client(sync_client=True) as client:
        for job_type, limit in limits.items():
            deployment = client.read_deployment_by_name(DEPLOYMENT_NAMES[job_type])
            client.update_deployment(deployment.id, DeploymentUpdate(concurrency_limit=limit))
            print(f"deployment {DEPLOYMENT_NAMES[job_type]}: at most {limit} jobs at once ({JOB_LIMIT_ENV[job_type]})")


def main(argv: list[str]) -> int:
    try:
        limits = job_limits()
    except JobLimitError as e:
        print(f"job limits: {e}", file=sys.stderr)
        return 2
    if "--check" not in argv:
        apply_job_limits(limits)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
