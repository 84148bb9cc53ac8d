"""The Prefect deployments of the archiver, by short name: `<flow name>/<deployment name>` as prefect.yaml
and `archiver serve` register them."""

DEPLOYMENT_NAMES = {
    "archive": "archive_datasetlist/datasets_archival",
    "retrieve": "retrieve_datasetlist/datasets_retrieval",
    "recover": "recover_job/job_recovery",
    "create": "create_test_dataset/dataset_creation",
    "prune": "prune_discarded/discarded_pruning",
    "clean": "clean_retrievals/retrieval_cleanup",
    "audit": "lts_audit/lts_auditing",
}
