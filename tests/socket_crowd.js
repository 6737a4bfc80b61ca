// Many browsers in one process: official socket.io-client sockets that record what they get.
//
// Commands come on stdin, one JSON object a line; each gets one JSON line on stdout.
//   {"op": "open", "url": U, "tokens": [T...], "reconnect": bool, "greeted": bool,
//    "timeout_ms": N}
//       opens one socket per token (websocket transport); answers once all are connected (with
//       "greeted", once each has also had the gateway's unread count, which ends its connect
//       replay), or at the timeout, with {"connected": n}. A reconnecting socket says "since":
//       the position of the last notification it got, as the demo page does.
//   {"op": "state", "ids": bool}
//       {"connected": n, "sockets": [{"connected", "connects", "ids"?, "last_connect_ms",
//        "last_notification_ms"}]} (times since the process started, in milliseconds).
//   {"op": "wait", "received": k, "timeout_ms": N}
//       answers once every socket has received at least k notifications, or at the timeout:
//       {"done": sockets that have, "elapsed_ms": since the command arrived}.
//   {"op": "close"}: disconnects every socket, answers, and exits.
"use strict";

const readline = require("readline");
const { io } = require("socket.io-client");

const started = process.hrtime.bigint();
const now = () => Number(process.hrtime.bigint() - started) / 1e6;
const sockets = [];

function openOne(url, token, reconnect) {
  const state = {
    socket: null,
    connects: 0,
    ids: [],
    since: null,
    lastConnect: null,
    lastNotification: null,
    countedAtConnect: 0,
  };
  state.socket = io(url, {
    transports: ["websocket"],
    reconnection: reconnect,
    reconnectionDelay: 500,
    reconnectionDelayMax: 3000,
    timeout: 60000,
    auth: (send) => send(state.since ? { token, since: state.since } : { token }),
  });
  state.socket.on("connect", () => {
    state.connects += 1;
    state.lastConnect = now();
  });
  state.socket.on("unread_count", () => {
    state.countedAtConnect = state.connects;
  });
  state.socket.on("notification", (item) => {
    state.ids.push(item.id);
    if (item.position) state.since = item.position;
    state.lastNotification = now();
  });
  return state;
}

function connected() {
  return sockets.filter((s) => s.socket.connected).length;
}

function greeted() {
  return sockets.filter((s) => s.socket.connected && s.countedAtConnect === s.connects).length;
}

function answer(body) {
  process.stdout.write(JSON.stringify(body) + "\n");
}

const ops = {
  open(command) {
    const before = sockets.length;
    for (const token of command.tokens) sockets.push(openOne(command.url, token, command.reconnect));
    const wanted = before + command.tokens.length;
    const deadline = now() + (command.timeout_ms || 60000);
    const ready = command.greeted ? greeted : connected;
    const check = () => {
      if (ready() >= wanted || now() > deadline) answer({ connected: ready() });
      else setTimeout(check, 20);
    };
    check();
  },
  state(command) {
    answer({
      connected: connected(),
      sockets: sockets.map((s) => ({
        connected: s.socket.connected,
        connects: s.connects,
        ids: command.ids ? s.ids : undefined,
        received: s.ids.length,
        last_connect_ms: s.lastConnect,
        last_notification_ms: s.lastNotification,
      })),
    });
  },
  wait(command) {
    const arrived = now();
    const deadline = arrived + (command.timeout_ms || 60000);
    const check = () => {
      const done = sockets.filter((s) => s.ids.length >= command.received).length;
      if (done === sockets.length || now() > deadline) {
        const last = Math.max(0, ...sockets.map((s) => s.lastNotification || 0));
        answer({ done, elapsed_ms: now() - arrived, last_ms: last - arrived });
      } else setTimeout(check, 2);
    };
    check();
  },
  close() {
    for (const s of sockets) s.socket.disconnect();
    answer({ closed: sockets.length });
    setTimeout(() => process.exit(0), 50);
  },
};

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const command = JSON.parse(line);
  ops[command.op](command);
});
process.stdin.on("end", () => process.exit(0));
