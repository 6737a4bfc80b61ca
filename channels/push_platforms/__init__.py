"""The push channel's platforms: one module per platform (`fcm`, `apns`, `webpush`), each with a
`PlatformSender` that sends one notification to one device of the platform."""

from __future__ import annotations

from typing import Protocol

from channels.base import ChannelContext, DeviceTarget, OutboundDelivery, Result


class PlatformSender(Protocol):
    """Sends to the devices of one platform.

    `send` makes one attempt at one device and never raises; a device the provider reports
    gone (FCM `UNREGISTERED`, APNs 410, Web Push 404/410) is a permanent result whose
    `gone_devices` names it. `configured` is False when the operator has not set the
    platform up: its devices are then skipped as unreachable.
    """

    platform: str

    def __init__(self, context: ChannelContext) -> None: ...

    @property
    def configured(self) -> bool: ...

    def send(self, device: DeviceTarget, delivery: OutboundDelivery) -> Result: ...

    def close(self) -> None: ...
