"""Runs of the deployments `archiver serve` registers, started as the archiver API starts them."""

from __future__ import annotations

from archiver.local_services import poll_until


def start_served_archival(job_id: str):
    """A run of the archival deployment for the job, once the runner has registered the deployment."""
    return start_served("archive_datasetlist/datasets_archival", job_id)


def start_served(deployment: str, job_id: str):
    """A run of `deployment` for the job, once the runner has registered the deployment."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    def start():
        try:
            return run_deployment(deployment, parameters={"job_id": job_id}, timeout=0)
        except ObjectNotFound:
            return None

    return poll_until(start, what="served deployment")


def wait_until_final(flow_run_id, timeout: float = 300):
    """The flow run once it is in a final state."""
    from prefect.client.orchestration import get_client

    def final():
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run_id)
        return run if run.state and run.state.is_final() else None

    return poll_until(final, timeout=timeout, what=f"flow run {flow_run_id} to end")
