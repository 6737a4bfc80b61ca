"""The gateway's room bookkeeping (`ws_gateway.room_index`) against python-socketio's own: the
same rooms after every step, and a crowd of sockets that leaves at once without stalling."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import socketio

from ws_gateway.room_index import IndexedRooms

NS = "/"

Step = Callable[[socketio.Manager, list[str]], object]

#: Each case: what happens to three connected clients (sids[0..2]) and one whose connect has not
#: completed (sids[3]), in order.
CASES: dict[str, list[Step]] = {
    "join and disconnect": [
        lambda m, s: m.enter_room(s[0], NS, "user-a"),
        lambda m, s: m.enter_room(s[1], NS, "user-a"),
        lambda m, s: m.basic_disconnect(s[0], NS),
    ],
    "leave a room, then disconnect": [
        lambda m, s: m.enter_room(s[0], NS, "user-a"),
        lambda m, s: m.enter_room(s[0], NS, "topic"),
        lambda m, s: m.leave_room(s[0], NS, "user-a"),
        lambda m, s: m.basic_disconnect(s[0], NS),
    ],
    "close a room its members share": [
        lambda m, s: m.enter_room(s[0], NS, "user-a"),
        lambda m, s: m.enter_room(s[2], NS, "user-a"),
        lambda m, s: m.close_room("user-a", NS),
        lambda m, s: m.basic_disconnect(s[2], NS),
    ],
    "disconnect while the disconnect is pending": [
        lambda m, s: m.enter_room(s[1], NS, "user-b"),
        lambda m, s: m.pre_disconnect(s[1], NS),
        lambda m, s: m.basic_disconnect(s[1], NS),
    ],
    "disconnect before the connect completed": [
        lambda m, s: m.enter_room(s[3], NS, "user-c"),
        lambda m, s: m.basic_disconnect(s[3], NS),
    ],
    "a callback outstanding": [
        lambda m, s: m._generate_ack_id(s[0], lambda *_: None),
        lambda m, s: m.basic_disconnect(s[0], NS),
    ],
    "everyone leaves": [
        lambda m, s: [m.enter_room(sid, NS, "all") for sid in s],
        lambda m, s: [m.basic_disconnect(sid, NS) for sid in s],
    ],
}


def _connected(manager: socketio.Manager) -> tuple[socketio.Manager, list[str]]:
    socketio.Server(client_manager=manager)
    return manager, [
        *(manager.connect(f"eio-{n}", NS) for n in range(3)),
        manager.pre_connect("eio-3", NS),
    ]


def _state(manager: socketio.Manager, sids: list[str]) -> object:
    rooms = {
        namespace: {room: dict(members) for room, members in by_room.items()}
        for namespace, by_room in manager.rooms.items()
    }
    return (
        rooms,
        {sid: manager.get_rooms(sid, NS) for sid in sids},
        set(manager.callbacks),
        manager.pending_connect,
        manager.pending_disconnect,
    )


@pytest.mark.parametrize("steps", CASES.values(), ids=CASES.keys())
def test_rooms_match_python_socketios_after_every_step(steps: list[Step]) -> None:
    ours, our_sids = _connected(IndexedRooms())
    theirs, their_sids = _connected(socketio.Manager())
    # Sids are random: compare the two managers with each one's sids in the other's place.
    rename = dict(zip(their_sids, our_sids, strict=True))
    for step in steps:
        step(ours, our_sids)
        step(theirs, their_sids)
        expected = repr(_state(theirs, their_sids))
        for theirs_sid, ours_sid in rename.items():
            expected = expected.replace(theirs_sid, ours_sid)
        assert repr(_state(ours, our_sids)) == expected


def test_ten_thousand_sockets_leave_at_once_without_stalling_the_gateway() -> None:
    manager = IndexedRooms()
    socketio.Server(client_manager=manager)
    sids = [manager.connect(f"eio-{n}", NS) for n in range(10_000)]
    for n, sid in enumerate(sids):
        manager.enter_room(sid, NS, f"user-{n}")
    started = time.perf_counter()
    for sid in sids:
        manager.basic_disconnect(sid, NS)
    # Searching every room for each one took about 10 s; the index makes it milliseconds.
    assert time.perf_counter() - started < 2.0
    assert manager.rooms == {}
