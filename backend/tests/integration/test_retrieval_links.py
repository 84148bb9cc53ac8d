"""Fresh links for a finished retrieval job from the archiver API (`GET /jobs/{id}/links`), run as a process
against the test Prefect server (the flows' settings and secrets), SciCat development server and S3 server."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from archiver.config.secrets import read_secret
from archiver.flows.archive import archive_datasets_flow
from archiver.flows.retrieve import retrieve_datasets_flow
from archiver.packing.retained import read_retain_until
from tests.integration.test_api import AUTH_SPEC, ROOT, start_api
from tests.integration.test_flows import job_of, new_dataset

pytestmark = pytest.mark.integration


def test_a_finished_retrieval_gets_fresh_links_until_its_copy_is_gone(pipeline, tmp_path, prefect_api_url, secrets_dir):
    pid = new_dataset(2, 0.2)
    archive_job = pipeline.new_job("archive", [pid])
    archive_datasets_flow(job_id=archive_job)
    job_id = pipeline.new_job("retrieve", [pid])
    retrieve_datasets_flow(job_id=job_id)
    [old] = job_of(pipeline, job_id)["jobResultObject"]["result"]
    bucket = pipeline.settings.s3.retrieval_bucket
    [key] = pipeline.retrieval_keys(pid)
    pipeline.s3.put_object_tagging(
        Bucket=bucket,
        Key=key,
        Tagging={  # retention nearly over
            "TagSet": [
                {
                    "Key": "retain-until",
                    "Value": (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            ]
        },
    )
    deployments = {"archive": "archive_datasetlist/none", "retrieve": "retrieve_datasetlist/none"}
    with start_api(tmp_path, secrets_dir, prefect_api_url, deployments) as server:
        api = httpx.Client(
            base_url=server.url + ROOT, timeout=60, headers={"Authorization": read_secret(AUTH_SPEC, secrets_dir, {})}
        )
        start = pipeline.scicat_dev.state()["nextSeq"] - 1

        answer = api.get(f"/jobs/{job_id}/links")

        assert answer.status_code == 200, answer.text
        [fresh] = answer.json()["result"]
        assert fresh["url"] != old["url"] and {k: v for k, v in fresh.items() if k != "url"} == {
            k: v for k, v in old.items() if k != "url"
        }
        assert len(httpx.get(fresh["url"], timeout=60).raise_for_status().content) == old["size"]
        assert fresh["url"] in answer.json()["downloadScript"]
        until = read_retain_until(pipeline.s3, bucket, key)
        assert until > datetime.now(UTC) + timedelta(days=6)  # covers the new links' 7 days
        assert [
            (e["method"], e["path"].rsplit("/", 2)[-2])
            for e in pipeline.scicat_dev.requests()
            if e["seq"] > start and not e["path"].endswith("auth/login")
        ] == [("GET", "jobs")]

        assert httpx.get(f"{server.url}{ROOT}/jobs/{job_id}/links").status_code == 401
        assert api.get(f"/jobs/{archive_job}/links").status_code == 409
        assert api.get(f"/jobs/{uuid.uuid4()}/links").status_code == 404
        pipeline.s3.delete_object(Bucket=bucket, Key=key)  # cleaned up
        gone = api.get(f"/jobs/{job_id}/links")
        assert gone.status_code == 410 and "retrieve the dataset again" in gone.json()["detail"]
