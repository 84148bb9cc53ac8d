"""The archiver API: SciCat POSTs a job, the API starts the matching Prefect deployment run."""
