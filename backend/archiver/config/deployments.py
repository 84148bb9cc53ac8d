"""The archiver's Prefect deployments and its two kinds of job, each name written once.

`archiver serve` registers the deployments from here; prefect.yaml registers the same ones for the compose
stack, and backend/tests/unit/test_deployments.py holds it to this catalogue. What the flows do for a kind of
job beyond its names (cleaning up an interrupted job) is in flows/jobs.py (`JobHooks`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Deployment:
    flow: str  # the flow's name
    name: str  # the deployment's name

    @property
    def full_name(self) -> str:
        """As Prefect looks a deployment up."""
        return f"{self.flow}/{self.name}"


@dataclass(frozen=True)
class JobKind:
    """A kind of SciCat job the archiver runs."""

    job_type: str  # SciCat's job type
    noun: str  # the deployment's tag; how logs and messages name a run of it
    deployment: Deployment  # its job runs, started by the API
    dataset_flow: str  # the name of its subflow, one run per dataset


ARCHIVAL = JobKind("archive", "archival", Deployment("archive_datasetlist", "datasets_archival"), "archive_dataset")
RETRIEVAL = JobKind(
    "retrieve", "retrieval", Deployment("retrieve_datasetlist", "datasets_retrieval"), "retrieve_dataset"
)
JOB_KINDS = {kind.job_type: kind for kind in (ARCHIVAL, RETRIEVAL)}

RECOVERY = Deployment("recover_job", "job_recovery")
TEST_DATASET = Deployment("create_test_dataset", "dataset_creation")
PRUNING = Deployment("prune_discarded", "discarded_pruning")
RETRIEVAL_CLEANUP = Deployment("clean_retrievals", "retrieval_cleanup")
AUDIT = Deployment("lts_audit", "lts_auditing")

# By the short names operators use (`archiver job`, the job limits of .env).
DEPLOYMENTS = {
    "archive": ARCHIVAL.deployment,
    "retrieve": RETRIEVAL.deployment,
    "recover": RECOVERY,
    "create": TEST_DATASET,
    "prune": PRUNING,
    "clean": RETRIEVAL_CLEANUP,
    "audit": AUDIT,
}
DEPLOYMENT_NAMES = {key: deployment.full_name for key, deployment in DEPLOYMENTS.items()}

# A job run's parameters, written by the API and read by the job flows and the recovery.
JOB_ID, DATASET_IDS, DATASET_FILES = "job_id", "dataset_ids", "dataset_files"

JOB_TAG_PREFIX = "scicat-job:"
JOB_TYPE_TAG_PREFIX = "job-type:"


def job_tag(job_id: object) -> str:
    """The tag the API gives the run of a SciCat job, by which `archiver job` finds it."""
    return f"{JOB_TAG_PREFIX}{job_id}"


def job_run_tags(job_type: str, job_id: object) -> list[str]:
    return [job_tag(job_id), f"{JOB_TYPE_TAG_PREFIX}{job_type}"]
