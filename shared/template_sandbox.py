"""Jinja2's immutable sandbox with bounded sizes and metered work, for templates apps hand in.

Templates come from the apps themselves but render inside shared services, so besides Jinja2's
own sandbox (no private attributes, no mutation, `range` of at most 100000) the environment:

- never runs a filter at compile time, so a template cannot make the compiler work;
- caps what one operation may build: repeat counts and integers (`*`, `**`), padding and format
  widths, and any value (a string, or a container as text) at `MAX_VALUE` characters; operations
  that could multiply their input (`~`, `+`, `%`, `format`, `join`, `replace`, `indent`,
  `wordwrap`, `urlize`, `expandtabs`, `translate`) are refused before they run when the result
  could be bigger than that;
- meters the work (see `shared.render_budget`): each loop iteration, call and filter is a step,
  and each value and output made, and the literal text of each loop iteration, is counted in
  characters made.

Over a cap is a `SecurityError`; over the budget an `OverBudget`. `lipsum` is not available.
"""

from __future__ import annotations

import re
import string
from collections.abc import (
    Callable,
    Collection,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    ValuesView,
)
from itertools import chain
from typing import Any, TypeVar

from jinja2 import StrictUndefined, nodes, pass_context
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace
from jinja2.visitor import NodeTransformer

from shared.render_budget import current_meter

MAX_VALUE = 1_000_000  # characters (as text) of any value a template makes
MAX_WIDTH = 10_000  # padding widths and other sizes a filter or method may be asked for
MAX_INT_BITS = 4096  # the largest integer `*` and `**` may build

# Filters whose extra arguments are values (compared, formatted, defaulted), not sizes.
_VALUE_FILTERS = frozenset(
    {
        *("default", "d", "format", "sum", "int", "float", "map"),
        *("select", "reject", "selectattr", "rejectattr"),
    }
)
# Filters and string methods that may put one of their arguments at each character of the value.
_MULTIPLYING_FILTERS = frozenset({"replace", "indent", "wordwrap", "urlize", "join", "format"})
_MULTIPLYING_METHODS = frozenset(
    {"replace", "join", "format", "format_map", "expandtabs", "translate"}
)
# ... where an integer argument is a count of characters put at each line or tab.
_COUNTS_PER_LINE = frozenset({"indent", "expandtabs"})
_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_PRINTF_SPEC = re.compile(r"%[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
# Keyword arguments Jinja2 adds to calls made inside loops and blocks: not the template's.
_INTERNAL_KWARGS = frozenset({"_loop_vars", "_block_vars"})

T = TypeVar("T")


def weight(value: Any, limit: int = MAX_VALUE) -> int:
    """About how many characters `value` has as text, counted until past `limit`: a string its
    length, a number its digits, a container (or namespace) its items' and one more for each;
    anything else (a range, a macro, an undefined value, a generator) one."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, int):
        return value.bit_length() * 3 // 10 + 1
    if isinstance(value, float):
        return 24  # the longest repr of one
    if isinstance(value, Namespace):
        value = object.__getattribute__(value, "_Namespace__attrs")
    items: Iterable[Any]
    if isinstance(value, Mapping):
        items = chain.from_iterable(value.items())
    elif isinstance(value, list | tuple | set | frozenset | KeysView | ValuesView | ItemsView):
        items = value
    else:
        return 1
    total = 0
    for item in items:
        total += 1 + weight(item, limit - total)
        if total > limit:
            break
    return total


def _made(value: T) -> T:
    """`value`, just made by a template: refused past `MAX_VALUE`, and counted as made."""
    meter = current_meter()
    room = MAX_VALUE if meter is None else min(MAX_VALUE, max(meter.made, 0))
    size = weight(value, room)
    if size > MAX_VALUE:
        raise SecurityError(f"a template may make values of at most {MAX_VALUE} characters.")
    if meter is not None:
        meter.make(size)
    return value


def _step() -> None:
    meter = current_meter()
    if meter is not None:
        meter.step()


def _check_room(subject: Any, extras: Iterable[int]) -> None:
    """Refuse an operation that may put something as big as the biggest of `extras` (weights)
    at each character of `subject`, when that could make more than `MAX_VALUE` characters:
    replacing, joining, formatting, indenting..."""
    base = weight(subject)
    if base + (base + 1) * max(extras, default=0) > MAX_VALUE:
        raise SecurityError(f"this could make more than {MAX_VALUE} characters.")


def _extras(args: Iterable[Any], kwargs: Mapping[str, Any], *, counts: bool) -> list[int]:
    """The weights of the arguments that may be repeated in the result: strings and
    containers, and integers too when they are counts of characters (`counts`)."""
    values = [*args, *(v for k, v in kwargs.items() if k not in _INTERNAL_KWARGS)]
    return [
        abs(value) if isinstance(value, int) else weight(value)
        for value in values
        if counts or not isinstance(value, int)
    ]


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


def _as_collection(value: Any) -> Any:
    """`value` as a list if it is a lazy iterable (a generator), so that it can be weighed."""
    return value if isinstance(value, Collection) else list(value)


# What a filter that is `pass_context`, `pass_eval_context` or `pass_environment` is passed.
_PASSED: dict[str, Callable[[Context], Any]] = {
    "context": lambda context: context,
    "eval_context": lambda context: context.eval_ctx,
    "environment": lambda context: context.environment,
}


def _check_sum(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    # Adding lists or tuples copies them again at each item: quadratic.
    start = kwargs.get("start", args[1] if len(args) > 1 else 0)
    if not isinstance(start, int | float):
        raise SecurityError("sum adds numbers (its start is a number).")


def _at_render_time(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` as a metered filter that refuses huge sizes and, being `pass_context`, is never
    folded into a constant at compile time (which would let a template make the compiler work)."""
    passed = _PASSED.get(getattr(getattr(func, "jinja_pass_arg", None), "name", None) or "")
    sizes, multiplies = name not in _VALUE_FILTERS, name in _MULTIPLYING_FILTERS

    @pass_context
    def run(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        _step()
        if sizes and (args or kwargs):
            _check_sizes([*args, *kwargs.values()])
        if name == "format" and isinstance(value, str):
            _check_printf(value)
        elif name == "sum":
            _check_sum(args, kwargs)
        if multiplies:
            if name == "join":
                value = _as_collection(value)
            _check_room(value, _extras(args, kwargs, counts=name in _COUNTS_PER_LINE))
        if passed is None:
            return _made(func(value, *args, **kwargs))
        return _made(func(passed(context), value, *args, **kwargs))

    return run


def _finalize(value: Any) -> Any:
    """What `{{ ... }}` outputs: None as nothing, and no more than a template may make."""
    return "" if value is None else _made(value)


def _literal_size(loop: nodes.For) -> int:
    """The characters of literal text in a loop (nested loops' too): what an iteration may add."""
    data = sum(len(node.data) for node in loop.find_all(nodes.TemplateData))
    strings = (node.value for node in loop.find_all(nodes.Const))
    return data + sum(len(value) for value in strings if isinstance(value, str))


def _environment_call(name: str, *args: nodes.Node, lineno: int) -> nodes.Call:
    """`environment.<name>(*args)`, a call the template itself cannot name."""
    return nodes.Call(
        nodes.EnvironmentAttribute(name, lineno=lineno), list(args), [], None, None, lineno=lineno
    )


class _Metering(NodeTransformer):
    """Rewrites a template so that every loop iterates through `metered_loop` and every `~`
    joins through `metered_concat`."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        literal = nodes.Const(_literal_size(node), lineno=node.lineno)
        node.iter = _environment_call("metered_loop", node.iter, literal, lineno=node.lineno)
        if node.recursive:  # `loop(children)` iterates its argument with this loop's body
            for call in chain.from_iterable(child.find_all(nodes.Call) for child in node.body):
                if isinstance(call.node, nodes.Name) and call.node.name == "loop" and call.args:
                    call.args[0] = _environment_call(
                        "metered_loop", call.args[0], literal, lineno=call.lineno
                    )
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        values = nodes.Tuple(node.nodes, "load", lineno=node.lineno)
        return _environment_call("metered_concat", values, lineno=node.lineno)


class _MeteredCodeGenerator(CodeGenerator):
    """Jinja2's code generator, after `_Metering` has rewritten the template."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        _Metering().visit(node)
        super().visit_Template(node, frame)


class Sandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox with strict undefined variables, bounded sizes and metering."""

    code_generator_class = _MeteredCodeGenerator
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, *, autoescape: bool) -> None:
        super().__init__(
            undefined=StrictUndefined,
            autoescape=autoescape,
            keep_trailing_newline=True,
            finalize=_finalize,
        )
        self.filters = {name: _at_render_time(name, f) for name, f in self.filters.items()}
        del self.globals["lipsum"]  # its sizes are unbounded, and messages need no filler

    def metered_loop(self, iterable: Iterable[Any], literal: int) -> Iterator[Any]:
        """`iterable`, one step and `literal` characters made per item."""
        meter = current_meter()
        if meter is None:
            yield from iterable
            return
        for item in iterable:
            meter.step()
            meter.make(literal)
            yield item

    @pass_context
    def metered_concat(self, context: Context, values: tuple[Any, ...]) -> str:
        """`a ~ b ~ ...`, refused before joining when that would be more than `MAX_VALUE`."""
        if sum(weight(value) for value in values) > MAX_VALUE:
            raise SecurityError(f"'~' may build at most {MAX_VALUE} characters.")
        joined: str = (markup_join if context.eval_ctx.autoescape else str_join)(values)
        return _made(joined)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        integers = isinstance(left, int) and isinstance(right, int)
        if operator == "*" and integers:
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise SecurityError(f"'*' may build at most {MAX_INT_BITS}-bit numbers.")
        elif operator == "*":
            for sized, count in ((left, right), (right, left)):
                repeats = isinstance(sized, str | list | tuple) and isinstance(count, int)
                if repeats and weight(sized) * count > MAX_VALUE:
                    raise SecurityError(f"'*' may build at most {MAX_VALUE} items.")
        elif operator == "**" and integers and right > 0:
            if left.bit_length() * right > MAX_INT_BITS:
                raise SecurityError(f"'**' may build at most {MAX_INT_BITS}-bit numbers.")
        elif operator == "%" and isinstance(left, str):
            _check_printf(left)
            # `%` takes a tuple of values, a mapping of them, or one value.
            if isinstance(right, Mapping):
                values = list(right.values())
            else:
                values = list(right) if isinstance(right, tuple) else [right]
            _check_room(left, [weight(value) for value in values])
        elif operator == "+" and weight(left) + weight(right) > MAX_VALUE:
            raise SecurityError(f"'+' may build at most {MAX_VALUE} characters.")
        return _made(super().call_binop(context, operator, left, right))

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _step()
        # Jinja2 wraps `str.format` in its own sandboxed formatter: the string is the wrapped's.
        wrapped = getattr(obj, "__wrapped__", None)
        owner = getattr(obj, "__self__", getattr(wrapped, "__self__", None))
        method = getattr(obj, "__name__", "")
        if isinstance(owner, str):
            if method in _PADDING_METHODS:
                _check_sizes([*args, *kwargs.values()])
            if method in _MULTIPLYING_METHODS:
                if method == "join" and args:
                    args = (_as_collection(args[0]), *args[1:])
                _check_room(owner, _extras(args, kwargs, counts=method in _COUNTS_PER_LINE))
        return _made(super().call(context, obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        # Jinja2 (3.1.5+) sandboxes `str.format` when the attribute is read: check widths then.
        owner = getattr(value, "__self__", None)
        if isinstance(owner, str) and getattr(value, "__name__", "") in ("format", "format_map"):
            _check_format(owner)
        return super().wrap_str_format(value)
