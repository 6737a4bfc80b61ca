"""The quick check of the common message shape agrees with the schema, or steps aside."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from channels.registry import channel_names
from producer_api.quick_check import quick_load
from producer_api.schemas import MessageCreateSchema

SCHEMA = MessageCreateSchema()


def schema_load(body: Any) -> Any:
    """The marshmallow schema alone, without the quick check in front."""
    return super(MessageCreateSchema, SCHEMA).load(body)


def text(low: int, high: int) -> st.SearchStrategy[str]:
    return st.text(min_size=low, max_size=high)


def sized(limit: int) -> st.SearchStrategy[str]:
    """Strings around a length limit, where off-by-one mistakes live."""
    return st.sampled_from([0, 1, limit - 1, limit, limit + 1]).map(lambda n: "u" * n)


ODD: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.integers(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.fixed_dictionaries({"k": st.just([])}),
)
RECIPIENT = st.one_of(
    st.fixed_dictionaries({"user_id": st.one_of(sized(200), text(0, 5), ODD)}),
    st.fixed_dictionaries({"topic": st.one_of(sized(100), ODD)}),
    st.fixed_dictionaries({"email": st.sampled_from(["a@example.com", "nope"])}),
    st.fixed_dictionaries({"user_id": st.just("a"), "topic": st.just("t")}),
    st.dictionaries(text(1, 8), st.just("x"), max_size=1),
    ODD,
)
CONTENT = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "title": st.one_of(sized(200), ODD),
            "body": st.one_of(sized(4000), ODD),
            "url": st.one_of(st.none(), st.just("https://example.com/x"), st.just("no url")),
            "data": st.one_of(st.dictionaries(text(0, 4), ODD, max_size=2), ODD),
            "extra": st.just(1),
        },
    ),
    ODD,
)
CHANNELS = st.one_of(
    st.lists(st.one_of(st.sampled_from(["web", "web", "pigeon", 7]), ODD, st.just({})), max_size=3),
    ODD,
)
VALID_RECIPIENT = st.one_of(
    st.fixed_dictionaries({"user_id": st.one_of(text(1, 200), sized(200))}),
    st.fixed_dictionaries({"topic": st.one_of(text(1, 100), sized(100))}),
)
# Bodies of the common shape, with lengths at and just past their limits.
VALID = st.fixed_dictionaries(
    {
        "to": st.lists(VALID_RECIPIENT, min_size=1, max_size=3),
        "channels": st.just(["web"]),
    },
    optional={
        "category": st.sampled_from(["notification", "marketing", "verification"]),
        "priority": st.sampled_from(["high", "normal", "low"]),
        "dedup_key": st.one_of(st.none(), text(1, 200), sized(200)),
    },
).flatmap(
    lambda base: st.one_of(
        st.fixed_dictionaries(
            {
                "content": st.fixed_dictionaries(
                    {"title": st.one_of(text(1, 200), sized(200))},
                    optional={
                        "body": st.one_of(text(0, 50), sized(4000)),
                        "url": st.none(),
                        "data": st.dictionaries(text(0, 4), ODD, max_size=2),
                    },
                )
            },
            optional={"template": st.none(), "params": st.none()},
        ),
        st.fixed_dictionaries(
            {"template": st.one_of(text(1, 100), sized(100))},
            optional={
                "params": st.one_of(st.none(), st.dictionaries(text(0, 4), ODD, max_size=2)),
                "content": st.none(),
            },
        ),
    ).map(lambda rest: {**base, **rest})
)
# Some fields of a nearly valid body changed to anything at all, or dropped.
CHANGES = st.fixed_dictionaries(
    {},
    optional={
        "to": st.one_of(st.lists(RECIPIENT, max_size=3), ODD),
        "channels": CHANNELS,
        "content": CONTENT,
        "template": st.one_of(st.none(), sized(100), ODD),
        "params": st.one_of(st.none(), st.dictionaries(text(0, 4), ODD, max_size=2), ODD),
        "category": st.sampled_from(["notification", "marketing", "verification", "spam", None]),
        "priority": st.sampled_from(["high", "normal", "low", "urgent", None]),
        "send_at": st.sampled_from([None, "2026-12-01T10:00:00+00:00", "soon"]),
        "expires_at": st.sampled_from([None, "2099-01-01T00:00:00Z"]),
        "dedup_key": st.one_of(st.none(), sized(200), ODD),
        "callback_url": st.sampled_from([None, "https://example.com/cb", "ftp://x"]),
        "unknown_field": st.just(True),
    },
)
BODY = st.one_of(
    VALID,
    st.tuples(VALID, CHANGES, st.lists(st.sampled_from(["to", "channels", "content"]))).map(
        lambda t: {k: v for k, v in {**t[0], **t[1]}.items() if k not in t[2]}
    ),
)


@settings(max_examples=1500, deadline=None)
@given(BODY)
def test_the_quick_check_gives_the_schemas_result_or_none(body: dict[str, Any]) -> None:
    quick = quick_load(body, channel_names)
    if quick is None:
        return
    try:
        expected = schema_load(body)
    except ValidationError as error:
        raise AssertionError(f"quick check accepted what the schema refuses: {error}") from error
    assert quick == expected


def test_the_common_shapes_take_the_quick_path() -> None:
    plain = {
        "to": [{"user_id": "a"}, {"topic": "t"}],
        "channels": ["web"],
        "content": {"title": "x"},
    }
    templated = {"to": [{"user_id": "a"}], "channels": ["web"], "template": "t", "params": {"n": 1}}
    for body in (plain, templated):
        assert quick_load(body, channel_names) == schema_load(body)
