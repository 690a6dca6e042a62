/** The schedules page: every ScheduledTask with its last and next run and recent runs. */

import { api } from "./api.js";
import { h, replace } from "./dom.js";
import { stateBadge, stateClass, timeCell } from "./format.js";
import { Poller } from "./live.js";
import { messages } from "./widgets.js";

const POLL_MS = 5000;
// The run record's states (forwarder_worker.runs.records.STATES), finished ones first.
const RUN_STATES = [
  "SUCCESS",
  "FAILURE",
  "SKIPPED",
  "REVOKED",
  "STARTED",
  "RETRY",
  "RECEIVED",
  "PENDING",
];
// Kept while the user moves between pages, so coming back shows the same filter.
const filters = { namespace: "", state: "", text: "" };

/** A schedule's link (names are encoded: they come from data). */
export function scheduleHref(namespace, name) {
  return `#/schedules/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}`;
}

/** The recent runs as coloured marks, oldest first, each a link to its run. */
export function runStrip(recentRuns) {
  const runs = [...(recentRuns || [])].reverse();
  return h(
    "span",
    { class: "strip" },
    runs.map((run) =>
      h("a", {
        class: `mark ${stateClass(run.state)}`,
        href: `#/runs/${encodeURIComponent(run.taskId)}`,
        title: `${run.state} · ${run.scheduledAt || run.startedAt || ""}${run.error ? ` · ${run.error}` : ""}`,
        "aria-label": run.state,
      }),
    ),
  );
}

/** Whether a schedule is held back: by spec.suspend, or after failures (its condition). */
export function suspension(item) {
  if (item.spec?.suspend) return "suspended";
  const ready = (item.status?.conditions || []).find((c) => c.type === "Ready");
  if (ready?.reason === "SuspendedAfterFailures") return "after failures";
  return null;
}

function lastState(item) {
  return item.status?.lastRun?.state || "";
}

function matches(item) {
  const { namespace, name } = item.metadata;
  if (filters.namespace && namespace !== filters.namespace) return false;
  if (filters.state === "NEVER" && lastState(item)) return false;
  if (filters.state === "SUSPENDED" && !suspension(item)) return false;
  if (
    filters.state &&
    !["NEVER", "SUSPENDED"].includes(filters.state) &&
    lastState(item) !== filters.state
  ) {
    return false;
  }
  if (filters.text) {
    const text = `${namespace}/${name} ${item.spec?.task || ""} ${item.status?.schedule || ""}`;
    if (!text.toLowerCase().includes(filters.text.toLowerCase())) return false;
  }
  return true;
}

function row(item) {
  const { namespace, name } = item.metadata;
  const status = item.status || {};
  const held = suspension(item);
  return h(
    "tr",
    { "data-schedule": `${namespace}/${name}` },
    h(
      "td",
      null,
      h(
        "a",
        { href: scheduleHref(namespace, name), class: "name" },
        h("span", { class: "ns" }, `${namespace}/`),
        name,
      ),
    ),
    h("td", { class: "mono" }, item.spec?.task || "—"),
    h("td", null, status.schedule || h("span", { class: "muted" }, "—")),
    h("td", null, item.spec?.timeZone || "UTC"),
    h(
      "td",
      null,
      held ? h("span", { class: "badge suspended" }, held) : h("span", { class: "muted" }, "no"),
    ),
    h(
      "td",
      null,
      lastState(item)
        ? [stateBadge(lastState(item)), " ", timeCell(status.lastScheduleTime, { compact: true })]
        : h("span", { class: "muted" }, "never"),
    ),
    h("td", null, timeCell(status.nextRunTime, { compact: true })),
    h("td", null, runStrip(status.recentRuns)),
  );
}

/** Render the page into `view`; returns the function that stops its polling. */
export function schedulesPage(view) {
  const notes = messages();
  const namespaceSelect = h("select", { id: "filter-namespace", "aria-label": "Namespace" });
  const stateSelect = h(
    "select",
    { id: "filter-state", "aria-label": "Last state" },
    [
      ["", "any last state"],
      ...RUN_STATES.map((state) => [state, state]),
      ["NEVER", "never ran"],
      ["SUSPENDED", "suspended"],
    ].map(([value, label]) => h("option", { value }, label)),
  );
  const search = h("input", {
    type: "search",
    id: "filter-text",
    placeholder: "filter by name, task, schedule",
    "aria-label": "Filter",
  });
  const count = h("span", { class: "muted count" });
  const body = h("tbody");
  const table = h(
    "table",
    { class: "grid", id: "schedules" },
    h(
      "thead",
      null,
      h(
        "tr",
        null,
        [
          "Schedule",
          "Task",
          "When",
          "Zone",
          "Suspended",
          "Last run",
          "Next run",
          "Recent runs",
        ].map((title) => h("th", null, title)),
      ),
    ),
    body,
  );
  let items = [];
  let shownNamespaces = null;

  const render = () => {
    const namespaces = [...new Set(items.map((i) => i.metadata.namespace))].sort();
    if (namespaces.join("\n") !== shownNamespaces) {
      // Rebuilt only when they change, so a select the user has open is left alone.
      shownNamespaces = namespaces.join("\n");
      replace(
        namespaceSelect,
        h("option", { value: "" }, "all namespaces"),
        namespaces.map((ns) => h("option", { value: ns }, ns)),
      );
      namespaceSelect.value = filters.namespace;
    }
    stateSelect.value = filters.state;
    const shown = items.filter(matches);
    replace(
      body,
      shown.length
        ? shown.map(row)
        : h(
            "tr",
            null,
            h(
              "td",
              { colspan: 8, class: "empty" },
              items.length ? "No schedule matches the filter." : "No schedules.",
            ),
          ),
    );
    replace(count, `${shown.length} of ${items.length}`);
  };

  for (const [input, key, event] of [
    [namespaceSelect, "namespace", "change"],
    [stateSelect, "state", "change"],
    [search, "text", "input"],
  ]) {
    input.addEventListener(event, () => {
      filters[key] = input.value;
      render();
    });
  }
  search.value = filters.text;

  replace(
    view,
    h("div", { class: "page-head" }, h("h1", null, "Schedules"), count),
    notes.element,
    h("div", { class: "toolbar" }, namespaceSelect, stateSelect, search),
    h("div", { class: "card flush" }, table),
  );
  render();

  const poller = new Poller(
    async (signal) => {
      const list = await api("GET", "/schedules", { signal });
      items = list.items;
      render();
    },
    { interval: POLL_MS, onError: (error) => notes.error(error), onOk: () => notes.clear() },
  ).start();
  return () => poller.stop();
}
