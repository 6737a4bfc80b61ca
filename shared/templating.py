"""Message templates: per-channel parts rendered by Jinja2's sandbox.

A template's parts are `{channel: {field: source}}` (`PART_FIELDS` lists each channel's fields).
Sources compile once (cached by source) and render in an immutable sandbox where an undefined
variable is an error; `email.html` is autoescaped, every other field is plain text. Nothing here
knows about Flask: the API checks and previews templates with it, the message path renders them.

Templates come from the apps themselves, but they render inside shared services, so the
environment also bounds the obvious amplifications: filters never run at compile time, repeat
counts, big numbers and padding widths are capped, and a field renders to at most `MAX_RENDERED`
characters. A loop that burns CPU without output is not bounded here.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, pass_context
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

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
MAX_RENDERED = 1_000_000  # characters of one rendered field
MAX_WIDTH = 10_000  # padding widths and other sizes a filter or method may be asked for
MAX_INT_BITS = 4096  # the largest integer `*` and `**` may build

# Filters whose extra arguments are values (compared, formatted, defaulted), not sizes.
_VALUE_FILTERS = frozenset(
    {
        *("default", "d", "format", "sum", "int", "float", "map"),
        *("select", "reject", "selectattr", "rejectattr"),
    }
)
_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_PRINTF_SPEC = re.compile(r"%[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


class TemplateRenderError(Exception):
    """A field could not be rendered with the given params: `field` names it (`web.title`),
    `message` (also `str(error)`) says why (`'order_id' is undefined`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _check_sizes(values: Iterable[Any]) -> None:
    for value in values:
        if isinstance(value, int) and abs(value) > MAX_WIDTH:
            raise SecurityError(f"{value} is more than a template may ask for ({MAX_WIDTH}).")


def _check_printf(text: str) -> None:
    for match in _PRINTF_SPEC.finditer(text):
        for number in match.groups():
            if number == "*" or (number is not None and int(number) > MAX_WIDTH):
                raise SecurityError(f"format widths are literal numbers of at most {MAX_WIDTH}.")


def _check_format(text: str) -> None:
    try:
        specs = [spec or "" for _, _, spec, _ in string.Formatter().parse(text)]
    except ValueError:
        return  # str.format itself reports the malformed string
    for spec in specs:
        if "{" in spec or any(int(n) > MAX_WIDTH for n in re.findall(r"\d+", spec)):
            raise SecurityError(f"format widths are literal numbers of at most {MAX_WIDTH}.")


def _at_render_time(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` as a filter that refuses huge sizes and, being `pass_context`, is never folded
    into a constant at compile time (which would let a template make the compiler work)."""
    passes = getattr(getattr(func, "jinja_pass_arg", None), "name", None)

    @pass_context
    def run(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        if name not in _VALUE_FILTERS:
            _check_sizes([*args, *kwargs.values()])
        if name == "format" and isinstance(value, str):
            _check_printf(value)
        first = {
            "context": context,
            "eval_context": context.eval_ctx,
            "environment": context.environment,
        }.get(passes or "")
        if first is None:
            return func(value, *args, **kwargs)
        return func(first, value, *args, **kwargs)

    return run


def _blank_none(value: Any) -> Any:
    return "" if value is None else value


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox with strict undefined variables and bounded sizes."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, *, autoescape: bool) -> None:
        super().__init__(
            undefined=StrictUndefined,
            autoescape=autoescape,
            keep_trailing_newline=True,
            finalize=_blank_none,
        )
        self.filters = {name: _at_render_time(name, f) for name, f in self.filters.items()}

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        integers = isinstance(left, int) and isinstance(right, int)
        if operator == "*" and integers:
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise SecurityError(f"'*' may build at most {MAX_INT_BITS}-bit numbers.")
        elif operator == "*":
            for sized, count in ((left, right), (right, left)):
                repeats = isinstance(sized, str | list | tuple) and isinstance(count, int)
                if repeats and len(sized) * count > MAX_RENDERED:
                    raise SecurityError(f"'*' may build at most {MAX_RENDERED} items.")
        elif operator == "**" and integers and right > 0:
            if left.bit_length() * right > MAX_INT_BITS:
                raise SecurityError(f"'**' may build at most {MAX_INT_BITS}-bit numbers.")
        elif operator == "%" and isinstance(left, str):
            _check_printf(left)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        if isinstance(getattr(obj, "__self__", None), str) and obj.__name__ in _PADDING_METHODS:
            _check_sizes([*args, *kwargs.values()])
        return super().call(context, obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        # Jinja2 (3.1.5+) sandboxes `str.format` when the attribute is read: check widths then.
        owner = getattr(value, "__self__", None)
        if isinstance(owner, str) and getattr(value, "__name__", "") in ("format", "format_map"):
            _check_format(owner)
        return super().wrap_str_format(value)


_TEXT = _Sandbox(autoescape=False)
_HTML = _Sandbox(autoescape=True)


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


def render_field(name: str, source: str, params: Mapping[str, Any]) -> str:
    """One field (`name` as `web.title`) rendered with `params`; `TemplateRenderError` if not."""
    try:
        template = _compiled(source, name in HTML_FIELDS)
        chunks: list[str] = []
        size = 0
        for chunk in template.generate(params):
            size += len(chunk)
            if size > MAX_RENDERED:
                raise TemplateRenderError(name, f"renders to more than {MAX_RENDERED} characters")
            chunks.append(chunk)
    except TemplateRenderError:
        raise
    except TemplateSyntaxError as error:
        raise TemplateRenderError(name, f"line {error.lineno}: {error.message}") from error
    except (UndefinedError, SecurityError) as error:
        raise TemplateRenderError(name, str(error)) from error
    except Exception as error:  # anything a template does wrong is its own error, never a 500
        raise TemplateRenderError(name, f"{type(error).__name__}: {error}") from error
    return "".join(chunks)


def render_parts(
    parts: Mapping[str, Mapping[str, str]],
    params: Mapping[str, Any],
    channels: Iterable[str] | None = None,
) -> dict[str, dict[str, str]]:
    """Every field of `parts` (or of the given channels' parts, where the template has them)
    rendered with `params`; raises `TemplateRenderError` naming the first field that fails."""
    wanted = list(parts) if channels is None else [c for c in channels if c in parts]
    return {
        channel: {
            field: render_field(f"{channel}.{field}", source, params)
            for field, source in parts[channel].items()
        }
        for channel in wanted
    }
