"""Serve the three deployments from this process: the local, Docker-less way to run the pipeline.

The compose stack registers the same deployments on Docker work pools from
`prefect.yaml`; here a Prefect runner executes their runs as local subprocesses.
"""

from __future__ import annotations

from prefect import serve

from archiver.flows.archive import archive_datasets_flow
from archiver.flows.retrieve import retrieve_datasets_flow
from archiver.flows.test_dataset import create_test_dataset_flow

DEPLOYMENT_NAMES = {
    "archive": "archive_datasetlist/datasets_archival",
    "retrieve": "retrieve_datasetlist/datasets_retrieval",
    "create": "create_test_dataset/dataset_creation",
}


def serve_deployments(limit: int | None = None) -> None:
    """Block, running scheduled runs of the deployments (at most `limit` at once)."""
    serve(
        archive_datasets_flow.to_deployment(name="datasets_archival", tags=["archival"]),
        retrieve_datasets_flow.to_deployment(name="datasets_retrieval", tags=["retrieval"]),
        create_test_dataset_flow.to_deployment(name="dataset_creation"),
        limit=limit,
        print_starting_message=False,
    )
