"""The clients a job run or the API works with (S3, SciCat) made from the run's configuration and Prefect's
Secret blocks, and riding out Prefect API outages. Below the flows: the API uses them without the flows."""
