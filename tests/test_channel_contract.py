"""Every channel adapter through the same provider answers, through one table.

Each rig of `tests/rigs/` is a channel (or one provider of it) wired to a local server speaking
the provider's protocol. For every answer that provider can give, the adapter must come back
with the outcome the worker runtime acts on, never raise, and, when sent, have sent what the
provider's documentation asks for. Adding a channel is adding its module and its rig.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from types import ModuleType

import pytest

import tests.rigs
from channels.base import Outcome
from channels.registry import channel_names
from shared.settings import Settings
from tests.channel_harness import EXPECTED, Answer, channel_settings

RIGS: dict[str, ModuleType] = {
    info.name: importlib.import_module(f"tests.rigs.{info.name}")
    for info in pkgutil.iter_modules(tests.rigs.__path__)
}
CASES = [
    pytest.param(module, answer, id=f"{name}: {answer.value}")
    for name, module in sorted(RIGS.items())
    for answer in Answer
    if answer in module.SUPPORTS
]


@pytest.fixture
def rig_settings() -> Iterator[Settings]:
    with channel_settings() as settings:
        yield settings


def test_every_channel_has_a_rig() -> None:
    assert set(channel_names()) <= {module.CHANNEL for module in RIGS.values()}


@pytest.mark.parametrize(("module", "answer"), CASES)
def test_the_adapter_classifies_the_providers_answer(
    module: ModuleType, answer: Answer, rig_settings: Settings
) -> None:
    with module.rig(rig_settings) as rig:
        rig.fake.answer(answer)
        delivery = rig.delivery()
        result = rig.channel.send(delivery)
        assert result.outcome is EXPECTED[answer], result
        if result.outcome is Outcome.SENT:
            rig.check_sent(delivery)
        else:
            assert result.detail
        if result.outcome is Outcome.DEFERRED:
            assert result.retry_after and result.retry_after > 0
