"""Templates rendered as a message would send them: within a budget, and each part held to
what its channel takes (a web part to the limits of a message's literal `content`)."""

from __future__ import annotations

from typing import Any

from producer_api.template_schemas import RENDERED_SCHEMAS
from shared.field_errors import flatten_errors
from shared.render_budget import RenderBudget
from shared.templating import TemplateLimitError, TemplateRenderError, render_parts


class Unrenderable(Exception):
    """A template that does not render with the given params, or not within the limits:
    `detail` and `errors` for the caller's 422."""

    def __init__(self, detail: str, errors: dict[str, list[str]]) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors


def render_message(
    parts: dict[str, dict[str, str]],
    params: dict[str, Any],
    channels: list[str] | None,
    budget: RenderBudget,
) -> dict[str, dict[str, str]]:
    """`parts` (the given channels', or all) rendered with `params` as one message of `budget`,
    each held to what its channel's part must be (`RENDERED_SCHEMAS`); `Unrenderable` if not.

    A param that is missing or misused is named as `params`; a part over a limit (the budget,
    a length, a URL that is not http or https) as `template.<channel>.<field>`.
    """
    try:
        rendered = render_parts(parts, params, channels, budget)
    except TemplateLimitError as error:
        raise Unrenderable(
            f"The template goes over a limit: {error.field}: {error}",
            {f"template.{error.field}": [str(error)]},
        ) from error
    except TemplateRenderError as error:
        raise Unrenderable(
            f"The template does not render with these params: {error.field}: {error}",
            {"params": [f"{error.field}: {error}"]},
        ) from error
    errors: dict[str, list[str]] = {}
    for channel, fields in rendered.items():
        checked = {**fields, "url": fields["url"] or None} if "url" in fields else fields
        problems = RENDERED_SCHEMAS[channel].validate(checked)
        errors.update(flatten_errors(problems, f"template.{channel}") if problems else {})
    if errors:
        raise Unrenderable("The rendered template is not what its channels take.", errors)
    return rendered
