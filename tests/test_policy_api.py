"""`/v1/policy`: an app's own dedup windows, frequency caps and discard switches over the
operator's `[policy]`, as the API shows them and as the dispatcher will read them."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from flask.testing import FlaskClient

from producer_api.api_keys import NewApp
from producer_api.app import create_app
from shared.config_file import parse_config
from shared.policy import app_policies
from shared.runtime import Runtime
from tests.conftest import bearer, new_tenant
from tests.offline_dns import offline_resolver
from tests.test_api import assert_problem

#: The operator's `[policy]` of the tests that use `operated`.
OPERATOR = """
[policy]
fail_open = ["dedup"]
[policy.dedup_window]
marketing = "10m"
[policy.frequency_cap.marketing]
limit = 3
window = "1h"
[policy.frequency_cap.notification]
limit = 50
window = "1d"
"""

#: What an app that set nothing is dispatched under, on `OPERATOR`.
OPERATED: dict[str, Any] = {
    "dedup_window": {"notification": 300.0, "marketing": 600.0, "verification": 300.0},
    "frequency_cap": {
        "notification": {"limit": 50, "window": 86400.0},
        "marketing": {"limit": 3, "window": 3600.0},
        "verification": None,
    },
    "discard": {"all": False, "templates": []},
    "fail_open": ["dedup"],
}

EVERYTHING: dict[str, Any] = {
    "dedup_window": {"notification": 0, "marketing": 120.5, "verification": 60},
    "frequency_cap": {
        "notification": None,
        "marketing": {"limit": 1, "window": 604800},
        "verification": {"limit": 10, "window": 60},
    },
    "discard": {"all": True, "templates": ["spring-sale", "b.weekly_digest"]},
}


@pytest.fixture(scope="module")
def operated_runtime(inprocess_runtime: Runtime) -> Runtime:
    """The in-process store, on settings whose file sets `OPERATOR`."""
    config = parse_config(tomllib.loads(OPERATOR))
    return replace(
        inprocess_runtime, settings=inprocess_runtime.settings.with_overrides(config=config)
    )


@pytest.fixture
def operated(operated_runtime: Runtime) -> Iterator[FlaskClient]:
    """A client of the API whose operator set `OPERATOR`."""
    app = create_app(operated_runtime.settings, operated_runtime, resolver=offline_resolver())
    with app.test_client() as test_client:
        yield test_client


def put(client: FlaskClient, tenant: NewApp, body: Any) -> Any:
    return client.put("/v1/policy", json=body, headers=bearer(tenant))


def shown(client: FlaskClient, tenant: NewApp) -> dict[str, Any]:
    response = client.get("/v1/policy", headers=bearer(tenant))
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    return body


def effective(body: dict[str, Any]) -> dict[str, Any]:
    """The merged policy of a GET or PUT answer, without `overrides` and `updated_at`."""
    return {k: v for k, v in body.items() if k not in ("overrides", "updated_at")}


def test_an_app_that_set_nothing_has_the_built_in_defaults(
    client: FlaskClient, tenant: NewApp
) -> None:
    assert shown(client, tenant) == {
        "dedup_window": {"notification": 300.0, "marketing": 300.0, "verification": 300.0},
        "frequency_cap": {
            "notification": None,
            "marketing": {"limit": 5, "window": 86400.0},
            "verification": None,
        },
        "discard": {"all": False, "templates": []},
        "fail_open": [],
        "overrides": {},
        "updated_at": None,
    }


def test_an_app_that_set_nothing_has_the_operators_policy(
    operated: FlaskClient, tenant: NewApp
) -> None:
    assert shown(operated, tenant) == {**OPERATED, "overrides": {}, "updated_at": None}


def test_what_an_app_puts_it_gets_back_and_the_dispatcher_reads(
    operated: FlaskClient, tenant: NewApp, operated_runtime: Runtime
) -> None:
    answer = put(operated, tenant, EVERYTHING)
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["updated_at"] is not None
    assert body["overrides"] == {
        **EVERYTHING,
        "discard": {"all": True, "templates": ["b.weekly_digest", "spring-sale"]},
    }
    assert effective(body) == {
        **body["overrides"],
        "dedup_window": {"notification": 0.0, "marketing": 120.5, "verification": 60.0},
        "fail_open": ["dedup"],  # the operator's, whatever the app sets
    }
    assert shown(operated, tenant) == body

    with operated_runtime.engine.connect() as connection:
        read = app_policies(connection, operated_runtime.settings.config.policy, [tenant.app_id])[
            tenant.app_id
        ]
    assert read.document() == effective(body)


def test_a_put_replaces_the_apps_overrides_and_the_rest_stays_the_operators(
    operated: FlaskClient, tenant: NewApp
) -> None:
    first = put(
        operated,
        tenant,
        {"dedup_window": {"notification": 0}, "frequency_cap": {"marketing": None}},
    ).get_json()
    assert first["dedup_window"] == {**OPERATED["dedup_window"], "notification": 0.0}
    assert first["frequency_cap"] == {**OPERATED["frequency_cap"], "marketing": None}
    assert first["discard"] == OPERATED["discard"]

    # The second PUT says nothing of dedup or caps: they are the operator's again.
    second = put(operated, tenant, {"discard": {"templates": ["promo"]}}).get_json()
    assert effective(second) == {**OPERATED, "discard": {"all": False, "templates": ["promo"]}}
    assert second["overrides"] == {"discard": {"all": False, "templates": ["promo"]}}
    assert second["updated_at"] > first["updated_at"]

    assert effective(put(operated, tenant, {}).get_json()) == OPERATED


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"dedup_window": {"promo": 60}}, "dedup_window.promo"),
        ({"dedup_window": {"marketing": -1}}, "dedup_window.marketing"),
        ({"dedup_window": {"marketing": 2_592_001}}, "dedup_window.marketing"),
        ({"dedup_window": {"marketing": "10m"}}, "dedup_window.marketing"),
        ({"dedup_window": []}, "dedup_window._schema"),
        ({"frequency_cap": {"promo": None}}, "frequency_cap.promo"),
        (
            {"frequency_cap": {"marketing": {"limit": 0, "window": 60}}},
            "frequency_cap.marketing.limit",
        ),
        (
            {"frequency_cap": {"marketing": {"limit": 1.5, "window": 60}}},
            "frequency_cap.marketing.limit",
        ),
        (
            {"frequency_cap": {"marketing": {"limit": 1_000_001, "window": 60}}},
            "frequency_cap.marketing.limit",
        ),
        (
            {"frequency_cap": {"marketing": {"limit": 5, "window": -60}}},
            "frequency_cap.marketing.window",
        ),
        (
            {"frequency_cap": {"marketing": {"limit": 5, "window": 0}}},
            "frequency_cap.marketing.window",
        ),
        (
            {"frequency_cap": {"marketing": {"limit": 5, "window": 2_678_401}}},
            "frequency_cap.marketing.window",
        ),
        ({"frequency_cap": {"marketing": {"limit": 5}}}, "frequency_cap.marketing.window"),
        (
            {"frequency_cap": {"marketing": {"limit": 5, "window": 60, "burst": 2}}},
            "frequency_cap.marketing.burst",
        ),
        ({"discard": {"templates": ["Spring Sale"]}}, "discard.templates.0"),
        ({"discard": {"templates": ["sale\n"]}}, "discard.templates.0"),
        ({"discard": {"templates": [f"t{i}" for i in range(201)]}}, "discard.templates"),
        ({"discard": {"all": "sometimes"}}, "discard.all"),
        ({"dedup_windows": {"marketing": 60}}, "dedup_windows"),
        ({"fail_open": ["dedup"]}, "fail_open"),
        ({"fail_open": [], "dedup_window": {"marketing": 60}}, "fail_open"),
    ],
    ids=[
        "unknown-category",
        "negative-window",
        "window-over-30-days",
        "window-as-text",
        "windows-not-an-object",
        "unknown-cap-category",
        "limit-0",
        "limit-not-an-integer",
        "limit-over-a-million",
        "negative-cap-window",
        "cap-window-0",
        "cap-window-over-31-days",
        "cap-without-window",
        "unknown-cap-field",
        "bad-template-code",
        "template-code-and-newline",
        "too-many-templates",
        "discard-all-not-boolean",
        "unknown-field",
        "fail-open",
        "fail-open-among-others",
    ],
)
def test_a_bad_body_is_a_422_naming_the_field_and_changes_nothing(
    operated: FlaskClient, tenant: NewApp, body: dict[str, Any], field: str
) -> None:
    before = put(operated, tenant, {"dedup_window": {"verification": 30}}).get_json()
    problem = assert_problem(put(operated, tenant, body), 422)
    assert field in problem["errors"], problem["errors"]
    if field == "fail_open":
        assert "operator" in problem["errors"]["fail_open"][0]
    assert shown(operated, tenant) == before


def test_an_apps_policy_is_its_own(operated: FlaskClient, operated_runtime: Runtime) -> None:
    a, b = new_tenant(operated_runtime), new_tenant(operated_runtime)
    mine = put(operated, a, EVERYTHING).get_json()
    assert shown(operated, b) == {**OPERATED, "overrides": {}, "updated_at": None}

    put(operated, b, {"discard": {"all": False}})
    assert shown(operated, a) == mine
    assert operated.delete("/v1/policy", headers=bearer(b)).status_code == 204
    assert shown(operated, a) == mine


def test_delete_brings_back_the_operators_policy(operated: FlaskClient, tenant: NewApp) -> None:
    put(operated, tenant, EVERYTHING)
    deleted = operated.delete("/v1/policy", headers=bearer(tenant))
    assert deleted.status_code == 204 and deleted.get_data() == b""
    assert shown(operated, tenant) == {**OPERATED, "overrides": {}, "updated_at": None}
    # Nothing left to forget is no error.
    assert operated.delete("/v1/policy", headers=bearer(tenant)).status_code == 204


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_the_policy_needs_an_api_key(operated: FlaskClient, method: str) -> None:
    assert_problem(operated.open("/v1/policy", method=method, json={}), 401)
