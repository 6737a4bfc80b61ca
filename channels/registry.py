"""Finds the channels: every module of this package that defines a `Channel` subclass.

Adding a channel is adding one module here; nothing else needs to list it.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from functools import cache

import channels
from channels.base import Channel
from shared.settings import Settings

_NOT_CHANNELS = {"accounts", "base", "registry", "worker"}


@cache
def channel_classes() -> dict[str, type[Channel]]:
    """Channel name -> class, for every channel module in the package."""
    found: dict[str, type[Channel]] = {}
    for module_info in pkgutil.iter_modules(channels.__path__):
        if module_info.name in _NOT_CHANNELS or module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"channels.{module_info.name}")
        for _attr, value in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(value, Channel)
                and value is not Channel
                and value.__module__ == module.__name__
            ):
                found[value.name] = value
    return found


def channel_names() -> tuple[str, ...]:
    return tuple(sorted(channel_classes()))


def configured_channels(settings: Settings) -> tuple[str, ...]:
    """The channels the operator has set up (see `Channel.configured`)."""
    return tuple(name for name in channel_names() if channel_class(name).configured(settings))


def reach_table() -> dict[str, frozenset[str]]:
    """Channel name -> the kinds of recipient it delivers to: `user` when it serves the app's
    users, and the bare address kinds it reaches (see `dispatcher.targets`)."""
    return {
        name: cls.reaches | ({"user"} if cls.serves_users else frozenset())
        for name, cls in channel_classes().items()
    }


def channels_reaching(kind: str) -> tuple[str, ...]:
    """The channels that deliver to a bare address of `kind` (`email`, `phone`)."""
    return tuple(name for name, cls in sorted(channel_classes().items()) if kind in cls.reaches)


def channel_class(name: str) -> type[Channel]:
    """The class of channel `name`; KeyError names the known ones."""
    classes = channel_classes()
    if name not in classes:
        raise KeyError(f"unknown channel {name!r}; known: {', '.join(sorted(classes))}")
    return classes[name]
