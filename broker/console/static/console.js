// The Strata operator console: one page, hash routes, the JSON API of broker/console/app.py.
//
// Every value from the server goes into the document as text (el() makes text nodes; no
// innerHTML anywhere), so a hostile topic, subscription, key or payload shows as text. The
// token, when the cluster needs one, lives in this tab's sessionStorage only and travels in
// the Authorization header; the server keeps none.
"use strict";

const TOKEN_KEY = "strata.console.token";
const MAX_PLOT_POINTS = 450; // 15 minutes at one point per 2 s
const MAX_TRACKED_TOPICS = 50; // topics whose plot history is kept while the page is open

const state = {
  session: null,
  page: null, // { route, refresh() }
  timer: null,
  topicHistory: new Map(), // topic name -> { t: [], in: [], out: [], backlog: [] }
  clusterHistory: null, // { t: [], in: [], out: [] }
  topicsView: { sort: "msg_backlog", desc: true, filter: "" },
};

// ---- DOM helpers ---------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "onclick" || key === "onsubmit" || key === "oninput" || key === "onchange") {
      node.addEventListener(key.slice(2), value);
    } else if (key === "className") {
      node.className = value;
    } else {
      node.setAttribute(key, String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function link(href, text) {
  return el("a", { href }, text);
}

function topicHref(name) {
  return "#/topic/" + encodeURIComponent(name);
}

function subscriptionHref(topic, name) {
  return "#/subscription/" + encodeURIComponent(topic) + "/" + encodeURIComponent(name);
}

function bookieHref(id) {
  return "#/bookie/" + encodeURIComponent(id);
}

function fmtRate(value) {
  return (value || 0).toLocaleString("en", { maximumFractionDigits: 1 });
}

function fmtCount(value) {
  return Number(value || 0).toLocaleString("en");
}

function fmtBytes(value) {
  let n = Number(value || 0);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let unit = 0;
  while (n >= 1024 && unit < units.length - 1) {
    n /= 1024;
    unit += 1;
  }
  return (unit ? n.toFixed(1) : String(n)) + " " + units[unit];
}

function fmtTime(ms) {
  return ms ? new Date(Number(ms)).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "";
}

function stat(label, value, extra) {
  return el("div", { className: "stat", ...(extra || {}) },
    el("div", { className: "value" }, value), el("div", { className: "label" }, label));
}

function table(id, headers, rows) {
  return el("table", { id },
    el("thead", {}, el("tr", {}, headers.map((h) =>
      el("th", { className: h.num ? "num" : null }, h.label)))),
    el("tbody", {}, rows));
}

function cell(value, num) {
  return el("td", { className: num ? "num" : null }, value);
}

function card(title, ...children) {
  return el("section", { className: "card" }, title ? el("h2", {}, title) : null, ...children);
}

// ---- API -----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, options) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const init = { headers, cache: "no-store", credentials: "omit" };
  if (options && options.body !== undefined) {
    init.method = "POST";
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.body);
  }
  const response = await fetch(path, init);
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (!response.ok) {
    const error = (body && body.error) || {};
    throw new ApiError(response.status, error.code || String(response.status),
      error.message || response.statusText);
  }
  return body;
}

function query(params) {
  return Object.entries(params)
    .map(([k, v]) => encodeURIComponent(k) + "=" + encodeURIComponent(v)).join("&");
}

// ---- plots ---------------------------------------------------------------------------------

function pushPoint(series, t, values) {
  series.t.push(t);
  for (const [key, value] of Object.entries(values)) series[key].push(value);
  if (series.t.length > MAX_PLOT_POINTS) {
    for (const key of Object.keys(series)) series[key].shift();
  }
}

function makePlot(container, labels, colors) {
  const width = Math.max(320, container.clientWidth - 10 || 600);
  const opts = {
    width,
    height: 200,
    scales: { x: { time: true } },
    series: [{}, ...labels.map((label, i) => ({ label, stroke: colors[i], width: 2 }))],
    axes: [{}, { size: 60 }],
  };
  const empty = [[], ...labels.map(() => [])];
  return new uPlot(opts, empty, container); // eslint-disable-line no-undef
}

function updatePlot(plot, container, series, keys) {
  plot.setData([series.t, ...keys.map((k) => series[k])]);
  container.setAttribute("data-points", String(series.t.length));
}

// ---- session -------------------------------------------------------------------------------

function renderSession() {
  const holder = document.getElementById("session");
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!state.session || !state.session.auth_required) {
    holder.replaceChildren();
    return;
  }
  holder.replaceChildren(token
    ? el("button", { id: "sign-out", onclick: () => {
      sessionStorage.removeItem(TOKEN_KEY);
      route();
    } }, "Forget token")
    : el("span", { className: "muted" }, "no token"));
}

function showSignIn(message) {
  stopTimer();
  const input = el("input", { id: "token", type: "password", autocomplete: "off",
    placeholder: "a JWT from `strata tokens create`" });
  const form = el("form", { className: "signin", onsubmit: (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (value) {
      sessionStorage.setItem(TOKEN_KEY, value);
      route();
    }
  } },
  el("h1", {}, "Sign in"),
  message ? el("div", { className: "error" }, message) : null,
  el("p", { className: "muted" },
    "This cluster needs a token. It is kept in this browser tab only and sent with each request."),
  el("label", { for: "token" }, "Token"), input,
  el("button", { type: "submit" }, "Use token"));
  document.getElementById("main").replaceChildren(form);
  renderSession();
}

function actionsAllowed() {
  return Boolean(state.session && state.session.actions_enabled &&
    (!state.session.auth_required || sessionStorage.getItem(TOKEN_KEY)));
}

// ---- pages ---------------------------------------------------------------------------------

function overviewPage() {
  const main = document.getElementById("main");
  const plotBox = el("div", { className: "plot", id: "cluster-rates-plot", "data-points": "0" });
  const body = el("div", { id: "overview" });
  main.replaceChildren(el("h1", {}, "Overview"),
    card("Messages per second, cluster (15 minutes)", plotBox), body);
  const plot = makePlot(plotBox, ["in", "out"], ["#2f855a", "#2b6cb0"]);
  let seeded = false;

  async function refresh() {
    const data = await api("/api/overview");
    if (!state.clusterHistory || !seeded) {
      state.clusterHistory = state.clusterHistory || { t: [], in: [], out: [] };
      if (state.clusterHistory.t.length === 0) {
        for (const [t, rin, rout] of data.rates) {
          pushPoint(state.clusterHistory, t, { in: rin, out: rout });
        }
      }
      seeded = true;
    }
    pushPoint(state.clusterHistory, data.time, { in: data.rate_in, out: data.rate_out });
    updatePlot(plot, plotBox, state.clusterHistory, ["in", "out"]);

    const bookies = data.bookies.bookies;
    const available = bookies.filter((b) => b.available).length;
    const store = data.metadata_store;
    body.replaceChildren(
      card(null, el("div", { className: "stats" },
        stat("messages in / s", fmtRate(data.rate_in), { id: "rate-in" }),
        stat("messages out / s", fmtRate(data.rate_out), { id: "rate-out" }),
        stat("brokers", fmtCount(data.brokers.length)),
        stat("bookies available", available + " / " + bookies.length, { id: "bookies-available" }),
        stat("under-replicated ledgers", fmtCount(data.bookies.under_replicated_ledger_count),
          { id: "under-replicated" }),
        stat("topics served", fmtCount(data.topics_served)),
        stat("metadata store", store.ok
          ? el("span", { className: "ok" }, "ok · " + store.latency_ms.toFixed(1) + " ms")
          : el("span", { className: "bad" }, "unreachable: " + store.error),
        { id: "metadata-store" }))),
      el("div", { className: "grid" },
        card("Topics with the largest backlog", table("top-backlog", [
          { label: "topic" }, { label: "backlog", num: true }, { label: "in / s", num: true },
          { label: "out / s", num: true }],
        data.top_backlog.map((t) => el("tr", { "data-topic": t.name },
          el("td", { className: "name" }, link(topicHref(t.name), t.name)),
          cell(fmtCount(t.msg_backlog), true), cell(fmtRate(t.msg_rate_in), true),
          cell(fmtRate(t.msg_rate_out), true))))),
        card("Brokers", table("brokers", [
          { label: "broker" }, { label: "topics", num: true }, { label: "bundles", num: true },
          { label: "in / s", num: true }, { label: "out / s", num: true },
          { label: "cpu %", num: true }, { label: "leader" }],
        data.brokers.map((b) => el("tr", {},
          cell(b.address), cell(fmtCount(b.topics), true), cell(fmtCount(b.bundles), true),
          cell(fmtRate(b.msg_rate_in), true), cell(fmtRate(b.msg_rate_out), true),
          cell(fmtRate(b.cpu_percent), true), cell(b.leader ? "yes" : ""))))),
        card("Bookies", el("p", { className: "muted" },
          "auditor: " + (data.bookies.auditor || "none")),
        table("bookies", [
          { label: "bookie" }, { label: "state" }, { label: "ledgers", num: true },
          { label: "disk used", num: true }, { label: "disk free", num: true },
          { label: "disk size", num: true }],
        bookies.map((b) => el("tr", { "data-bookie": b.id },
          el("td", {}, link(bookieHref(b.id), b.id)),
          el("td", { className: b.available ? "ok" : "bad" }, b.available ? "available" : "down"),
          cell(fmtCount(b.ledger_count), true), cell(fmtBytes(b.disk_used_bytes), true),
          cell(fmtBytes(b.disk_free_bytes), true), cell(fmtBytes(b.disk_total_bytes), true)))))));
  }
  return { refresh };
}

const TOPIC_COLUMNS = [
  { key: "name", label: "topic" },
  { key: "msg_rate_in", label: "in / s", num: true, fmt: fmtRate },
  { key: "msg_rate_out", label: "out / s", num: true, fmt: fmtRate },
  { key: "msg_backlog", label: "backlog", num: true, fmt: fmtCount },
  { key: "storage_size", label: "storage", num: true, fmt: fmtBytes },
  { key: "producers_count", label: "producers", num: true, fmt: fmtCount },
  { key: "consumers_count", label: "consumers", num: true, fmt: fmtCount },
  { key: "subscriptions_count", label: "subscriptions", num: true, fmt: fmtCount },
];

function topicsPage(namespace) {
  const main = document.getElementById("main");
  const view = state.topicsView;
  const select = el("select", { id: "namespace", onchange: () => {
    location.hash = select.value ? "#/topics/" + encodeURIComponent(select.value) : "#/topics";
  } });
  const filter = el("input", { id: "filter", type: "search", placeholder: "filter by name",
    value: view.filter, oninput: () => {
      view.filter = filter.value;
      draw();
    } });
  const holder = el("div", {});
  const count = el("span", { className: "muted", id: "topic-count" });
  main.replaceChildren(el("h1", {}, namespace ? "Topics of " + namespace : "Topics"),
    card(null, el("div", { className: "toolbar" }, el("label", { for: "namespace" }, "Namespace"),
      select, filter, count), holder));
  let rows = [];
  let namespacesLoaded = false;

  function sortedRows() {
    const needle = view.filter.toLowerCase();
    const shown = rows.filter((r) => !needle || r.name.toLowerCase().includes(needle));
    const key = view.sort;
    shown.sort((a, b) => {
      const x = a[key] ?? (key === "name" ? "" : -1);
      const y = b[key] ?? (key === "name" ? "" : -1);
      const order = typeof x === "string" ? x.localeCompare(y) : x - y;
      return (view.desc ? -order : order) || a.name.localeCompare(b.name);
    });
    return shown;
  }

  function draw() {
    const shown = sortedRows();
    count.textContent = shown.length + " of " + rows.length + " topics";
    holder.replaceChildren(el("table", { id: "topics-table" },
      el("thead", {}, el("tr", {}, TOPIC_COLUMNS.map((c) => el("th", {
        className: ["sortable", c.num ? "num" : "",
          view.sort === c.key ? (view.desc ? "sorted-desc" : "sorted-asc") : ""].join(" "),
        "data-sort": c.key,
        onclick: () => {
          view.desc = view.sort === c.key ? !view.desc : c.key !== "name";
          view.sort = c.key;
          draw();
        },
      }, c.label)))),
      el("tbody", {}, shown.map((r) => el("tr", { "data-topic": r.name },
        TOPIC_COLUMNS.map((c) => c.key === "name"
          ? el("td", { className: "name" }, link(topicHref(r.name), r.name),
            r.loaded ? null : el("span", { className: "muted" }, " (not loaded)"))
          : cell(r.loaded ? c.fmt(r[c.key]) : "–", true)))))));
  }

  async function refresh() {
    if (!namespacesLoaded) {
      const data = await api("/api/namespaces");
      const options = [el("option", { value: "" }, "all namespaces")];
      for (const tenant of data.tenants) {
        for (const ns of tenant.namespaces) {
          const value = tenant.tenant + "/" + ns;
          options.push(el("option", { value, selected: value === namespace ? "selected" : null },
            value));
        }
      }
      select.replaceChildren(...options);
      namespacesLoaded = true;
    }
    const data = await api("/api/topics" + (namespace ? "?" + query({ namespace }) : ""));
    rows = data.topics;
    draw();
  }
  return { refresh };
}

function topicSeries(name) {
  let series = state.topicHistory.get(name);
  if (!series) {
    if (state.topicHistory.size >= MAX_TRACKED_TOPICS) {
      state.topicHistory.delete(state.topicHistory.keys().next().value);
    }
    series = { t: [], in: [], out: [], backlog: [] };
    state.topicHistory.set(name, series);
  }
  return series;
}

function topicPage(name) {
  const main = document.getElementById("main");
  const result = el("div", { id: "action-result" });
  const body = el("div", {});
  const ratesBox = el("div", { className: "plot", id: "topic-rates-plot", "data-points": "0" });
  const backlogBox = el("div", { className: "plot", id: "topic-backlog-plot", "data-points": "0" });
  const actions = actionsAllowed()
    ? card("Actions", el("div", { className: "toolbar" },
      el("button", { id: "unload", onclick: () => act("unload", { topic: name }) }, "Unload"),
      el("button", { id: "offload", onclick: () => act("offload", { topic: name }) },
        "Offload closed ledgers")), result)
    : null;
  main.replaceChildren(el("h1", {}, name), actions, body,
    el("div", { className: "grid", id: "topic-plots" },
      card("Messages per second", ratesBox), card("Backlog (largest subscription)", backlogBox)));
  const ratesPlot = makePlot(ratesBox, ["in", "out"], ["#2f855a", "#2b6cb0"]);
  const backlogPlot = makePlot(backlogBox, ["backlog"], ["#c05621"]);

  async function act(verb, payload) {
    result.replaceChildren(el("p", { className: "muted" }, verb + "…"));
    try {
      const answer = await api("/api/actions/" + verb, { body: payload });
      result.replaceChildren(el("p", { className: "ok" }, verb + " done"),
        answer.status ? el("p", {}, "offload: " + answer.status.status) : null);
    } catch (error) {
      result.replaceChildren(el("div", { className: "error" }, error.message));
    }
  }

  async function refresh() {
    const data = await api("/api/topic?" + query({ name }));
    if (data.partitions.length) {
      body.replaceChildren(card("Partitions (" + data.partitions.length + ")",
        el("ul", { id: "partitions" }, data.partitions.map((p) =>
          el("li", {}, link(topicHref(p), p))))));
      document.getElementById("topic-plots").hidden = true;
      return;
    }
    const s = data.stats;
    const series = topicSeries(name);
    pushPoint(series, data.time, { in: s.msg_rate_in, out: s.msg_rate_out, backlog: s.msg_backlog });
    updatePlot(ratesPlot, ratesBox, series, ["in", "out"]);
    updatePlot(backlogPlot, backlogBox, series, ["backlog"]);
    const subscriptions = Object.entries(s.subscriptions)
      .sort((a, b) => a[0].localeCompare(b[0]));
    body.replaceChildren(
      card(null, el("div", { className: "stats" },
        stat("in / s", fmtRate(s.msg_rate_in)), stat("out / s", fmtRate(s.msg_rate_out)),
        stat("backlog", fmtCount(s.msg_backlog), { id: "topic-backlog" }),
        stat("storage", fmtBytes(s.storage_size)), stat("producers", fmtCount(s.producers_count)),
        stat("entries", fmtCount(s.entries_count)), stat("deduplication", s.deduplication_status))),
      card("Subscriptions", table("subscriptions", [
        { label: "subscription" }, { label: "type" }, { label: "backlog", num: true },
        { label: "unacked", num: true }, { label: "consumers", num: true },
        { label: "out / s", num: true }, { label: "redelivered / s", num: true }],
      subscriptions.map(([sub, st]) => el("tr", { "data-subscription": sub },
        el("td", { className: "name" }, link(subscriptionHref(name, sub), sub)), cell(st.type),
        cell(fmtCount(st.msg_backlog), true), cell(fmtCount(st.unacked_messages), true),
        cell(fmtCount(st.consumers_count), true), cell(fmtRate(st.msg_rate_out), true),
        cell(fmtRate(st.msg_rate_redeliver), true))))),
      card("Ledgers", el("p", { className: "muted" },
        "last entry " + data.ledgers.last_confirmed_entry),
      table("ledgers", [
        { label: "ledger", num: true }, { label: "state" }, { label: "entries", num: true },
        { label: "size", num: true }, { label: "offload" }, { label: "bookies" },
        { label: "E/Qw/Qa" }, { label: "created" }],
      data.ledgers.ledgers.map((l) => el("tr", { "data-ledger": l.ledger_id },
        cell(String(l.ledger_id), true), cell(l.open ? "open" : "closed"),
        cell(fmtCount(l.entries), true), cell(fmtBytes(l.size_bytes), true),
        cell(l.offload_state || "—"),
        el("td", {}, l.bookies.map((b, i) => [i ? ", " : "", link(bookieHref(b), b)])),
        cell(l.ensemble_size ? l.ensemble_size + "/" + l.write_quorum + "/" + l.ack_quorum : ""),
        cell(fmtTime(l.created_ms)))))));
  }
  return { refresh };
}

function subscriptionPage(topic, name) {
  const main = document.getElementById("main");
  const body = el("div", {});
  const result = el("div", { id: "action-result" });
  let actions = null;
  if (actionsAllowed()) {
    const peekCount = el("input", { id: "peek-count", type: "number", min: 1, max: 100, value: 10 });
    const skipCount = el("input", { id: "skip-count", type: "number", min: 1, value: 1 });
    const resetTo = el("input", { id: "reset-to", placeholder: "LEDGER:ENTRY or earliest time (ISO)" });
    const base = { topic, subscription: name };
    actions = card("Actions", el("div", { className: "toolbar" },
      el("button", { id: "peek", onclick: () => peek(Number(peekCount.value)) }, "Peek"), peekCount,
      el("button", { id: "skip", onclick: () => act("skip", { ...base, count: Number(skipCount.value) }) },
        "Skip"), skipCount,
      el("button", { id: "clear-backlog", className: "danger", onclick: () => {
        if (confirm("Acknowledge every message of " + name + "?")) act("clear-backlog", base);
      } }, "Clear backlog"),
      el("button", { id: "reset-cursor", onclick: () => {
        const value = resetTo.value.trim();
        const time = Date.parse(value);
        act("reset-cursor", /^\d+:\d+$/.test(value) ? { ...base, message_id: value }
          : { ...base, publish_time_ms: Number.isNaN(time) ? 0 : time });
      } }, "Reset cursor to"), resetTo), result);

    async function peek(count) {
      result.replaceChildren(el("p", { className: "muted" }, "peeking…"));
      try {
        const answer = await api("/api/actions/peek", { body: { ...base, count } });
        result.replaceChildren(table("peeked", [
          { label: "message id" }, { label: "published" }, { label: "key" },
          { label: "properties" }, { label: "size", num: true }, { label: "payload" }],
        answer.messages.map((m) => el("tr", {},
          cell(m.message_id), cell(fmtTime(m.publish_time_ms)), cell(m.key ?? ""),
          cell(Object.entries(m.properties || {}).map(([k, v]) => k + "=" + v).join(", ")),
          cell(fmtBytes(m.size_bytes), true),
          el("td", {}, el("pre", { className: "payload" }, m.error || m.payload))))));
      } catch (error) {
        result.replaceChildren(el("div", { className: "error" }, error.message));
      }
    }
  }

  async function act(verb, payload) {
    result.replaceChildren(el("p", { className: "muted" }, verb + "…"));
    try {
      const answer = await api("/api/actions/" + verb, { body: payload });
      result.replaceChildren(el("p", { className: "ok" }, verb + " done" +
        (answer.skipped_messages !== undefined ? ": " + answer.skipped_messages + " messages" : "")));
      await refresh();
    } catch (error) {
      result.replaceChildren(el("div", { className: "error" }, error.message));
    }
  }

  main.replaceChildren(el("h1", {}, name),
    el("p", {}, "subscription of ", link(topicHref(topic), topic)), actions, body);

  async function refresh() {
    const data = await api("/api/subscription?" + query({ topic, name }));
    const s = data.stats;
    body.replaceChildren(
      card(null, el("div", { className: "stats" },
        stat("type", s.type), stat("backlog", fmtCount(s.msg_backlog), { id: "subscription-backlog" }),
        stat("unacked", fmtCount(s.unacked_messages)), stat("consumers", fmtCount(s.consumers_count)),
        stat("out / s", fmtRate(s.msg_rate_out)), stat("redelivered / s", fmtRate(s.msg_rate_redeliver)),
        stat("delayed", fmtCount(s.msg_delayed)), stat("acknowledged up to", s.mark_delete_position))),
      card("Consumers", table("consumers", [
        { label: "consumer" }, { label: "permits", num: true }, { label: "unacked", num: true },
        { label: "delivered", num: true }, { label: "bytes", num: true },
        { label: "priority", num: true }, { label: "blocked" }],
      s.consumers.map((c) => el("tr", { "data-consumer": c.consumer_name },
        cell(c.consumer_name), cell(fmtCount(c.available_permits), true),
        cell(fmtCount(c.unacked_messages), true), cell(fmtCount(c.msg_out_counter), true),
        cell(fmtBytes(c.bytes_out_counter), true), cell(String(c.priority_level), true),
        cell(c.blocked_on_unacked_messages ? "on unacked" : ""))))));
  }
  return { refresh };
}

function bookiePage(id) {
  const main = document.getElementById("main");
  const body = el("div", {});
  main.replaceChildren(el("h1", {}, "Bookie " + id), body);
  async function refresh() {
    const data = await api("/api/bookie?" + query({ id }));
    const b = data.bookie;
    const used = b.disk_total_bytes ? (100 * (b.disk_total_bytes - b.disk_free_bytes)) / b.disk_total_bytes : 0;
    body.replaceChildren(card(null, el("div", { className: "stats" },
      stat("state", el("span", { className: b.available ? "ok" : "bad" },
        b.available ? "available" : "down"), { id: "bookie-state" }),
      stat("ledgers", fmtCount(b.ledger_count)), stat("journal + index", fmtBytes(b.disk_used_bytes)),
      stat("disk free", fmtBytes(b.disk_free_bytes)), stat("disk in use", used.toFixed(1) + " %"),
      stat("instance", b.instance_id || "—"), stat("auditor", data.auditor ? "yes" : "no"),
      stat("under-replicated ledgers (cluster)", fmtCount(data.under_replicated_ledger_count)))));
  }
  return { refresh };
}

// ---- routing and refresh -------------------------------------------------------------------

function stopTimer() {
  if (state.timer) clearTimeout(state.timer);
  state.timer = null;
}

function showError(error) {
  const main = document.getElementById("main");
  let box = document.getElementById("page-error");
  if (!box) {
    box = el("div", { className: "error", id: "page-error" });
    main.prepend(box);
  }
  box.textContent = error.message + (error.code ? " (" + error.code + ")" : "");
}

async function tick(page) {
  if (state.page !== page) return;
  try {
    await page.refresh();
    const box = document.getElementById("page-error");
    if (box) box.remove();
  } catch (error) {
    if (state.page !== page) return;
    if (error.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showSignIn(error.message);
      return;
    }
    showError(error);
  }
  if (state.page === page) {
    state.timer = setTimeout(() => tick(page), state.session.refresh_seconds * 1000);
  }
}

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map((p) => {
    try {
      return decodeURIComponent(p);
    } catch (e) {
      return p;
    }
  });
  return parts;
}

function route() {
  stopTimer();
  renderSession();
  if (state.session.auth_required && !sessionStorage.getItem(TOKEN_KEY)) {
    state.page = null;
    showSignIn(null);
    return;
  }
  const [kind, a, b] = parseRoute();
  let page;
  if (kind === "topics") page = topicsPage(a || "");
  else if (kind === "topic" && a) page = topicPage(a);
  else if (kind === "subscription" && a && b !== undefined) page = subscriptionPage(a, b);
  else if (kind === "bookie" && a) page = bookiePage(a);
  else page = overviewPage();
  state.page = page;
  tick(page);
}

async function start() {
  try {
    state.session = await api("/api/session");
  } catch (error) {
    document.getElementById("main").replaceChildren(
      el("div", { className: "error" }, "The console API did not answer: " + error.message));
    return;
  }
  document.getElementById("broker").textContent = "broker " + state.session.broker;
  window.addEventListener("hashchange", route);
  route();
}

start();
