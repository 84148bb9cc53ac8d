"""`archiver job archive|retrieve PID...`: create a SciCat job as a user would, follow the run SciCat's
job action started through the archiver API, and print the outcome and any download links."""

from __future__ import annotations

import os

from archiver.config.deployments import job_tag
from archiver.errors import ArchiverError
from archiver.scicat.client import ScicatClient, ScicatCredentials
from archiver.scicat.models import JobStatus


class JobNotStarted(ArchiverError):
    """SciCat stored the job, but no flow run appeared for it."""


def run_of_job(job_id: str):
    """The flow run the archiver API started for a SciCat job (tag scicat-job:<id>), or None yet."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[job_tag(job_id)])))
    return runs[0].id if runs else None


def wait_for_run(job_id: str, timeout_s: float):
    from archiver.local_services import poll_until

    try:
        return poll_until(lambda: run_of_job(job_id), timeout_s, f"a flow run of SciCat job {job_id}")
    except AssertionError:  # poll_until's time-out
        raise JobNotStarted(
            f"SciCat stored job {job_id} but no flow run started for it within {timeout_s:.0f} s: check that "
            "SciCat's job configuration calls the archiver API (docs/scicat.md) and that the API answers"
        ) from None


def ui_url() -> str:
    return os.environ.get("PREFECT_API_URL", "").removesuffix("/").removesuffix("/api") or "the Prefect UI"


def submit(
    job_type: str, pids: list[str], scicat: ScicatClient, follow: bool, start_timeout_s: float, say=print
) -> int:
    """Create the job; when following, show its run to the end. Exit code: 0 when the job succeeded."""
    from archiver.watch import follow_run

    job = scicat.create_job(job_type, pids)
    say(f"SciCat {job_type} job {job.id} created for {len(pids)} dataset(s)")
    if not follow:
        return 0
    follow_run(wait_for_run(job.created_id, start_timeout_s), ui_url())
    job = scicat.get_job(job.created_id)
    message = job.status_message or (job.job_result_object or {}).get("message", "")
    say(f"SciCat job {job.id}: {job.status}" + (f" ({message})" if message else ""))
    for entry in (job.job_result_object or {}).get("result", []):
        say(f"download {entry['datasetId']} {entry['name']} ({entry['size']} bytes): {entry['url']}")
    return 0 if job.status == JobStatus.FINISHED_SUCCESSFUL else 1


def run(
    job_type: str, pids: list[str], scicat_url: str | None, secrets_dir, follow: bool, start_timeout_s: float
) -> int:
    from archiver.config.settings import ScicatSection

    if scicat_url:
        settings = ScicatSection(endpoint=scicat_url)
    else:
        from archiver.config.runtime import load_run_configuration

        settings = load_run_configuration().settings.scicat
    with ScicatClient(settings, ScicatCredentials.from_secret_files(secrets_dir)) as scicat:
        return submit(job_type, pids, scicat, follow, start_timeout_s)
