"""`GET /v1/users`, `/v1/topics` and `/v1/templates`: an app's things, a page at a time."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from producer_api.api_keys import NewApp
from tests.conftest import bearer as auth
from tests.test_api import assert_problem

# (list path, the item's key field, how to create an item of that key, and its body)
KINDS = [
    (
        "/v1/users",
        "user_id",
        "/v1/users/{key}",
        {"email": "someone@example.com", "devices": [{"platform": "fcm", "token": "t"}]},
    ),
    ("/v1/topics", "key", "/v1/topics/{key}", {"name": "A topic"}),
    ("/v1/templates", "code", "/v1/templates/{key}", {"parts": {"web": {"title": "Hi"}}}),
]
KEYS = ["e-5", "a-1", "c-3", "b-2", "d-4"]


def _all_pages(client: FlaskClient, tenant: NewApp, path: str, limit: int) -> list[Any]:
    pages, cursor = [], None
    while True:
        query = f"?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        response = client.get(path + query, headers=auth(tenant))
        assert response.status_code == 200, response.get_data(as_text=True)
        page = response.get_json()
        pages.append(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages


@pytest.mark.parametrize(("path", "field", "item_path", "body"), KINDS, ids=[k[0] for k in KINDS])
def test_every_item_is_listed_once_in_key_order_a_page_at_a_time(
    client: FlaskClient, tenant: NewApp, path: str, field: str, item_path: str, body: Any
) -> None:
    assert client.get(path, headers=auth(tenant)).get_json() == {"items": [], "next_cursor": None}
    for key in KEYS:
        created = client.put(item_path.format(key=key), json=body, headers=auth(tenant))
        assert created.status_code == 201, created.get_data(as_text=True)
    pages = _all_pages(client, tenant, path, limit=2)
    assert [[item[field] for item in page] for page in pages] == [
        ["a-1", "b-2"],
        ["c-3", "d-4"],
        ["e-5"],
    ]
    # Each item is shown as its own GET shows it.
    single = client.get(item_path.format(key="c-3"), headers=auth(tenant)).get_json()
    assert pages[1][0] == single
    everything = client.get(path, headers=auth(tenant)).get_json()
    assert [item[field] for item in everything["items"]] == sorted(KEYS)
    assert everything["next_cursor"] is None


def test_listed_topics_count_their_subscribers(client: FlaskClient, tenant: NewApp) -> None:
    client.put("/v1/topics/busy", json={}, headers=auth(tenant))
    client.put("/v1/topics/quiet", json={}, headers=auth(tenant))
    client.post(
        "/v1/topics/busy/subscribers", json={"user_ids": ["a", "b", "c"]}, headers=auth(tenant)
    )
    listed = client.get("/v1/topics", headers=auth(tenant)).get_json()["items"]
    assert {topic["key"]: topic["subscribers"] for topic in listed} == {"busy": 3, "quiet": 0}


@pytest.mark.parametrize("path", [k[0] for k in KINDS])
@pytest.mark.parametrize(
    ("query", "field"),
    [("limit=0", "limit"), ("limit=1001", "limit"), ("cursor=", "cursor"), ("page=2", "page")],
)
def test_bad_paging_is_a_422_naming_the_parameter(
    client: FlaskClient, tenant: NewApp, path: str, query: str, field: str
) -> None:
    problem = assert_problem(client.get(f"{path}?{query}", headers=auth(tenant)), 422)
    assert field in problem["errors"], problem
