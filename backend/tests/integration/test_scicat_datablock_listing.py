"""`GET /api/v3/datablocks?filter=`, SciCat's listing of every datablock, on the development server over HTTP
(answers as SciCat's DatablocksController does, `archiver/devtools/scicat_filters.py`), and the client's paging.

Each test has a SciCat of its own: the listing shows every datablock the server holds."""

import json
import uuid

import pytest

from archiver import local_services
from archiver.scicat.client import ScicatClient, ScicatCredentials, ScicatError
from tests.integration.test_scicat_devserver import DATABLOCK, dataset_path, new_dataset

pytestmark = pytest.mark.integration

LISTING = "/api/v3/datablocks"


@pytest.fixture
def own_scicat(scicat_secrets_dir, services_log_dir, scicat_dev_for):
    with local_services.scicat_dev_server(scicat_secrets_dir, services_log_dir) as server:
        yield scicat_dev_for(server.url, scicat_secrets_dir)


def register(dev, count: int, pid: str | None = None) -> tuple[str, list[dict]]:
    """`count` datablocks under one dataset (a new one unless `pid`); the dataset and the blocks SciCat made."""
    pid = pid or new_dataset(dev)
    blocks = []
    for i in range(count):
        body = {**DATABLOCK, "archiveId": f"{pid}/{i:03d}-{uuid.uuid4().hex[:6]}.tar", "packedSize": 1000 + i}
        response = dev.call("POST", dataset_path(pid, "/datablocks"), json=body)
        assert response.status_code == 201, response.text
        blocks.append(response.json())
    return pid, blocks


def client_of(dev, secrets_dir, **options) -> ScicatClient:
    from archiver.config.settings import ScicatSection

    credentials = ScicatCredentials.from_secret_files(secrets_dir, environ={})
    return ScicatClient(ScicatSection(endpoint=dev.url), credentials, **options)


def listed(dev, listing: dict | str | None = None):
    params = {} if listing is None else {"filter": listing if isinstance(listing, str) else json.dumps(listing)}
    return dev.call("GET", LISTING, params=params)


def test_without_limits_scicat_answers_at_most_100_datablocks(own_scicat):
    register(own_scicat, 103)
    assert len(listed(own_scicat).json()) == 100
    assert len(listed(own_scicat, {"limits": {"limit": 0}}).json()) == 100  # a falsy limit is the default
    assert len(listed(own_scicat, {"limits": {"limit": 500}}).json()) == 103  # SciCat sets no upper bound


def test_limit_skip_and_order_page_through_every_datablock_once(own_scicat):
    _, blocks = register(own_scicat, 7)
    pages = [
        listed(own_scicat, {"limits": {"limit": 3, "skip": skip, "order": "_id:asc"}}).json() for skip in (0, 3, 6)
    ]
    assert [len(page) for page in pages] == [3, 3, 1]
    ids = [block["_id"] for page in pages for block in page]
    assert ids == sorted(block["_id"] for block in blocks)
    by_size = listed(own_scicat, {"limits": {"limit": 2, "order": "packedSize:desc"}}).json()
    assert [block["packedSize"] for block in by_size] == [1006, 1005]
    unsorted = listed(own_scicat, {"limits": {"order": "packedSize"}}).json()  # no direction: no sort
    assert [block["_id"] for block in unsorted] == [block["_id"] for block in blocks]


def test_fields_project_the_datablocks_and_where_selects_a_dataset(own_scicat):
    pid, blocks = register(own_scicat, 2)
    register(own_scicat, 3)
    answer = listed(own_scicat, {"where": {"datasetId": pid}, "fields": ["datasetId", "archiveId"]}).json()
    assert answer == [{"_id": b["_id"], "datasetId": pid, "archiveId": b["archiveId"]} for b in blocks]
    as_object = listed(
        own_scicat, {"where": {"datasetId": {"inq": [pid]}}, "fields": {"archiveId": True, "size": False}}
    )
    assert as_object.json() == [{"_id": b["_id"], "archiveId": b["archiveId"]} for b in blocks]
    assert len(listed(own_scicat, {"fields": []}).json()[0]["dataFileList"]) == 1  # empty: every field


def test_a_malformed_filter_gets_scicats_500_and_a_filter_scicat_cannot_apply_a_400(own_scicat):
    register(own_scicat, 1)
    for malformed in ('{"limits": {"limit": 1},}', "{where", "not json"):
        answer = listed(own_scicat, malformed)
        assert (answer.status_code, answer.json()) == (500, {"statusCode": 500, "message": "Internal server error"})
    for refused, named in [
        ({"limits": {"limit": "10"}}, "limits.limit"),
        ({"limits": {"skip": -1}}, "limits.skip"),
        ({"limits": 5}, "limits"),
        ([1, 2], "filter must be a JSON object"),
        ({"where": {"size": {"gt": 3}}}, "where.size"),
        ({"sort": "x"}, "sort"),
    ]:
        answer = listed(own_scicat, refused)
        assert answer.status_code == 400 and named in answer.json()["message"], (refused, answer.text)
    assert own_scicat._http.get(LISTING).status_code == 401  # no token


def test_the_client_lists_every_datablock_in_pages_of_the_size_asked(own_scicat, scicat_secrets_dir):
    _, first = register(own_scicat, 4)
    _, second = register(own_scicat, 3)
    with client_of(own_scicat, scicat_secrets_dir) as scicat:
        since = own_scicat.state()["nextSeq"]
        got = list(scicat.iter_datablocks(page_size=3))
        with pytest.raises(ValueError, match="page size 0 must be a whole number"):
            next(scicat.iter_datablocks(page_size=0))
    assert sorted((b.id, b.dataset_id, b.archive_id, b.packed_size) for b in got) == sorted(
        (b["_id"], b["datasetId"], b["archiveId"], b["packedSize"]) for b in first + second
    )
    pages = [e for e in own_scicat.requests() if e["seq"] >= since and e["path"].startswith(LISTING)]
    assert [e["status"] for e in pages] == [200, 200, 200]  # 3 + 3 + 1


def test_the_client_names_scicats_answer_to_a_listing_it_refuses(own_scicat, scicat_secrets_dir):
    with client_of(own_scicat, scicat_secrets_dir, retries=0) as scicat:
        scicat.login()
        own_scicat.fail_next(1, 500)
        with pytest.raises(ScicatError, match=r"SciCat call 'list datablocks' for datablocks 0 to 9 failed: HTTP 500"):
            list(scicat.iter_datablocks(page_size=10))
