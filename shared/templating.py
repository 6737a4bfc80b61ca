"""Message templates: per-channel parts rendered by Jinja2's sandbox, within a budget.

A template's parts are `{channel: {field: source}}` (`PART_FIELDS` lists each channel's fields).
Sources compile once (cached by source) and render in `shared.template_sandbox`'s environment,
where an undefined variable is an error; `email.html` is autoescaped, every other field is plain
text. Each `render_parts` is one message's share of a request's `RenderBudget`
(`shared.render_budget`), and a field renders to at most `MAX_FIELD` characters. Nothing here
knows about Flask: the API checks and previews templates with it, the message path renders them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import Template, TemplateSyntaxError
from jinja2.exceptions import SecurityError, UndefinedError

from shared.render_budget import MessageBudget, OverBudget, RenderBudget
from shared.template_sandbox import Sandbox

PART_FIELDS: dict[str, tuple[str, ...]] = {
    "web": ("title", "body", "url"),
    "email": ("subject", "text", "html"),
    "sms": ("text",),
    "push": ("title", "body"),
}
#: The fields whose variables are HTML-escaped.
HTML_FIELDS = frozenset({"email.html"})
#: A template code, as in `/v1/templates/{code}` and a message's `template`.
TEMPLATE_CODE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
MAX_FIELD = 100_000  # characters of one rendered field (the most any channel takes)


class TemplateRenderError(Exception):
    """A field could not be rendered with the given params: `field` names it (`web.title`),
    `message` (also `str(error)`) says why (`'order_id' is undefined`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class TemplateLimitError(TemplateRenderError):
    """A field went over a limit: the render budget, or the size or form the field may have."""


_TEXT = Sandbox(autoescape=False)
_HTML = Sandbox(autoescape=True)


@lru_cache(maxsize=1024)
def _compiled(source: str, html: bool) -> Template:
    return (_HTML if html else _TEXT).from_string(source)


def compile_errors(parts: Mapping[str, Mapping[str, str]]) -> dict[str, list[str]]:
    """What does not compile, as `{"email.html": ["line 3: unexpected '}'"]}`; empty if all do."""
    errors: dict[str, list[str]] = {}
    for channel, fields in parts.items():
        for field, source in fields.items():
            name = f"{channel}.{field}"
            try:
                _compiled(source, name in HTML_FIELDS)
            except TemplateSyntaxError as error:
                errors[name] = [f"line {error.lineno}: {error.message or 'syntax error'}"]
            except Exception as error:  # e.g. nesting too deep for the parser
                errors[name] = [f"does not compile: {type(error).__name__}: {error}"]
    return errors


def render_field(name: str, source: str, params: Mapping[str, Any], budget: MessageBudget) -> str:
    """One field (`name` as `web.title`) rendered with `params` within `budget`;
    `TemplateLimitError` over a limit, `TemplateRenderError` for any other failure."""
    try:
        template = _compiled(source, name in HTML_FIELDS)
        chunks: list[str] = []
        size = 0
        with budget.metering():
            for chunk in template.generate(params):
                size += len(chunk)
                if size > MAX_FIELD:
                    raise TemplateLimitError(name, f"renders to more than {MAX_FIELD} characters")
                chunks.append(chunk)
        text = "".join(chunks)
        budget.add_output(len(text.encode("utf-8", "surrogatepass")))
    except TemplateRenderError:
        raise
    except OverBudget as error:
        raise TemplateLimitError(name, str(error)) from error
    except TemplateSyntaxError as error:
        raise TemplateRenderError(name, f"line {error.lineno}: {error.message}") from error
    except (UndefinedError, SecurityError) as error:
        raise TemplateRenderError(name, str(error)) from error
    except Exception as error:  # anything a template does wrong is its own error, never a 500
        raise TemplateRenderError(name, f"{type(error).__name__}: {error}") from error
    return text


def render_parts(
    parts: Mapping[str, Mapping[str, str]],
    params: Mapping[str, Any],
    channels: Iterable[str] | None = None,
    budget: RenderBudget | None = None,
) -> dict[str, dict[str, str]]:
    """Every field of `parts` (or of the given channels' parts, where the template has them)
    rendered with `params` as one message of `budget` (by default a request of its own);
    raises `TemplateRenderError` naming the first field that fails."""
    wanted = list(parts) if channels is None else [c for c in channels if c in parts]
    message = (budget or RenderBudget()).message()
    return {
        channel: {
            field: render_field(f"{channel}.{field}", source, params, message)
            for field, source in parts[channel].items()
        }
        for channel in wanted
    }
