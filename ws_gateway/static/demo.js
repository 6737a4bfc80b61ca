// omnipush demo inbox: the user's notifications, live over Socket.IO.
// Every notification received is acknowledged; clicking one (or "mark all read") reads it.
(function () {
  "use strict";

  var token = document.body.dataset.token || "";
  var list = document.getElementById("items");
  var empty = document.getElementById("empty");
  var badge = document.getElementById("badge");
  var status = document.getElementById("status");
  var markAll = document.getElementById("mark-all");
  var items = new Map(); // delivery id -> {item, read}
  var pendingAcks = new Set();
  var ackTimer = null;
  var MAX_IDS = 1000;

  // The token stays in memory only: drop it from the address bar and history.
  if (window.history && window.history.replaceState) {
    window.history.replaceState(null, "", window.location.pathname);
  }

  function setStatus(text, kind) {
    status.textContent = text;
    status.className = "status " + kind;
  }

  function setBadge(count) {
    badge.textContent = String(count);
    badge.classList.toggle("zero", count === 0);
  }

  function safeUrl(url) {
    if (typeof url !== "string") return null;
    try {
      var parsed = new URL(url, window.location.href);
      return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
    } catch (e) {
      return null;
    }
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function render() {
    var ids = Array.from(items.keys()).sort().reverse(); // ids sort by time: newest first
    list.replaceChildren();
    ids.forEach(function (id) {
      var entry = items.get(id);
      var item = entry.item;
      var li = el("li", "item " + (entry.read ? "read" : "unread"));
      li.dataset.id = id;
      li.tabIndex = 0;
      var head = el("div", "item-head");
      head.appendChild(el("span", "title", item.title || "(no title)"));
      head.appendChild(el("span", "category", item.category));
      li.appendChild(head);
      if (item.body) li.appendChild(el("p", "body", item.body));
      var foot = el("div", "item-foot");
      var when = new Date(item.created_at);
      foot.appendChild(el("time", "when", isNaN(when) ? item.created_at : when.toLocaleString()));
      var href = safeUrl(item.url);
      if (href) {
        var link = el("a", "link", "open");
        link.href = href;
        link.target = "_blank";
        link.rel = "noopener noreferrer";
        foot.appendChild(link);
      }
      li.appendChild(foot);
      list.appendChild(li);
    });
    empty.hidden = items.size > 0;
  }

  function add(item, read) {
    if (!item || typeof item.id !== "string") return false;
    var known = items.get(item.id);
    if (known) {
      known.read = known.read || read;
      return false;
    }
    items.set(item.id, { item: item, read: read });
    return true;
  }

  function flushAcks() {
    ackTimer = null;
    var ids = Array.from(pendingAcks);
    pendingAcks.clear();
    for (var i = 0; i < ids.length; i += MAX_IDS) {
      socket.emit("ack", { ids: ids.slice(i, i + MAX_IDS) });
    }
  }

  function queueAck(id) {
    pendingAcks.add(id);
    if (ackTimer === null) ackTimer = window.setTimeout(flushAcks, 50);
  }

  function markRead(ids) {
    ids.forEach(function (id) {
      var entry = items.get(id);
      if (entry) entry.read = true;
    });
    render();
  }

  if (typeof window.io !== "function") {
    setStatus("socket.io client missing: /static/socket.io.min.js (run make)", "error");
    return;
  }

  // The live feed position of the last notification received: a reconnect says it (`since`)
  // and gets what it missed instead of the whole unacknowledged replay.
  var lastPosition = null;
  var socket = window.io({
    auth: function (send) {
      send(lastPosition ? { token: token, since: lastPosition } : { token: token });
    },
  });

  var expired = false;
  socket.on("connect", function () { setStatus("live", "live"); });
  socket.on("disconnect", function (reason) {
    if (!expired) setStatus("offline (" + reason + ")", "offline");
  });
  // The server disconnects a socket whose token expired, after saying so.
  socket.on("unauthorized", function () {
    expired = true;
    setStatus("token expired: open the page with a new token", "error");
  });
  // The replay of what is unread failed: connect again to get it.
  socket.on("error", function () {
    setStatus("could not load the inbox, reconnecting…", "offline");
    window.setTimeout(function () { socket.disconnect().connect(); }, 1000);
  });
  socket.on("connect_error", function (err) {
    if (err && err.message === "unauthorized") {
      setStatus("token rejected: open the page with a new token", "error");
    } else {
      setStatus("cannot connect, retrying…", "offline");
    }
  });
  socket.on("notification", function (item) {
    if (item && typeof item.position === "string") lastPosition = item.position;
    if (item && typeof item.id === "string") queueAck(item.id);
    if (add(item, false)) render();
  });
  socket.on("unread_count", function (body) {
    if (body && typeof body.count === "number") setBadge(body.count);
  });

  list.addEventListener("click", function (event) {
    if (event.target.closest("a")) return;
    var li = event.target.closest("li.item");
    if (!li) return;
    var entry = items.get(li.dataset.id);
    if (!entry || entry.read) return;
    socket.emit("read", { ids: [li.dataset.id] });
    markRead([li.dataset.id]);
  });
  list.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && event.target.matches("li.item")) event.target.click();
  });
  markAll.addEventListener("click", function () {
    socket.emit("read", { all: true });
    markRead(Array.from(items.keys()));
  });

  // History: the newest page of the inbox, with what was already read.
  fetch("/v1/inbox?limit=50", { headers: { Authorization: "Bearer " + token } })
    .then(function (response) { return response.ok ? response.json() : { items: [] }; })
    .then(function (page) {
      (page.items || []).forEach(function (item) { add(item, item.read === true); });
      render();
    })
    .catch(function () { /* the live stream still works */ });

  render();
})();
