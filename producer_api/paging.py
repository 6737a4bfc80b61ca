"""Cursor paging of the list endpoints: in, `limit` and `cursor` (the last key seen); out, the
page's `items` and a `next_cursor` to ask for the next one (null on the last page).

A page is read in key order starting after the cursor, with one row more than asked for: that
row, if there, says that another page follows. Keys are unique within an app, so no item is
skipped or shown twice, even while items are added or removed between pages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from marshmallow import fields, validate
from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute

from producer_api.fields import StrictSchema

DEFAULT_PAGE, MAX_PAGE = 100, 1000
Item = TypeVar("Item")
Statement = TypeVar("Statement", bound=Select[*tuple[Any, ...]])


class PageQuery(StrictSchema):
    """The query of a list endpoint."""

    limit = fields.Integer(load_default=DEFAULT_PAGE, validate=validate.Range(min=1, max=MAX_PAGE))
    cursor = fields.String(load_default=None, validate=validate.Length(min=1, max=200))


def paged(
    statement: Statement, key: InstrumentedAttribute[str], query: Mapping[str, Any]
) -> Statement:
    """`statement` limited to the rows of the page `query` asks for, plus one."""
    if query["cursor"] is not None:
        statement = statement.where(key > query["cursor"])
    return statement.order_by(key).limit(query["limit"] + 1)


def cut_page(
    rows: Sequence[Item], query: Mapping[str, Any], cursor_of: Callable[[Item], str]
) -> tuple[Sequence[Item], str | None]:
    """The rows `paged` read as the page and the cursor of the next page, if there is one."""
    page = rows[: query["limit"]]
    return page, cursor_of(page[-1]) if len(rows) > query["limit"] else None
