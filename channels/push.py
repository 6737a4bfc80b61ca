"""The push channel: one notification to every device of the user, on each device's platform.

Each platform (`channels.push_platforms`: FCM, APNs, Web Push) has a sender of its own; this
module sends to each device and makes one result of theirs: sent when any device got it, else
worth a retry when any device failed transiently, else deferred or permanent. Devices a
platform reports gone are passed on for the worker to remove, whatever the outcome. A retry
sends to every device again, so a device that had it may see it twice.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence

import channels.push_platforms
from channels.base import Channel, ChannelContext, OutboundDelivery, Outcome, Result
from channels.push_platforms import PlatformSender
from shared.settings import Settings


def platform_senders(context: ChannelContext) -> dict[str, PlatformSender]:
    """Platform name -> its sender, for every module of `channels.push_platforms`."""
    senders: dict[str, PlatformSender] = {}
    for info in pkgutil.iter_modules(channels.push_platforms.__path__):
        module = importlib.import_module(f"channels.push_platforms.{info.name}")
        sender: PlatformSender = module.Sender(context)
        senders[sender.platform] = sender
    return senders


def combined(results: Sequence[Result], devices: int) -> Result:
    """One result for a delivery from the results of its devices (see the module docstring)."""
    gone = tuple(device for result in results for device in result.gone_devices)
    by_outcome = {outcome: [r for r in results if r.outcome is outcome] for outcome in Outcome}
    sent = by_outcome[Outcome.SENT]
    if sent:
        return Result.sent(f"sent to {len(sent)} of {devices} devices", gone_devices=gone)
    for outcome in (Outcome.TRANSIENT, Outcome.DEFERRED, Outcome.PERMANENT):
        these = by_outcome[outcome]
        if these:
            detail = "; ".join(dict.fromkeys(r.detail or outcome.value for r in these))
            waits = [r.retry_after for r in these if r.retry_after]
            return Result(outcome, detail, min(waits) if waits else None, None, gone)
    return Result.permanent("the user has no devices")


class PushChannel(Channel):
    """App push to every device of the user: FCM, APNs and Web Push."""

    name = "push"
    needs_devices = True

    def __init__(self, context: ChannelContext) -> None:
        super().__init__(context)
        self.senders = platform_senders(context)

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        config = settings.config
        return bool(
            config.fcm.service_account_file
            or config.apns.key_file
            or config.webpush.vapid_private_key
        )

    def send(self, delivery: OutboundDelivery) -> Result:
        results = []
        for device in delivery.devices:
            sender = self.senders.get(device.platform)
            if sender is None or not sender.configured:
                results.append(Result.permanent(f"{device.platform} push is not configured"))
                continue
            results.append(sender.send(device, delivery))
        return combined(results, len(delivery.devices))

    def close(self) -> None:
        for sender in self.senders.values():
            sender.close()
