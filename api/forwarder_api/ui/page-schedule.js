/** A schedule's page: its spec, next fire times, recent runs on a timeline, counts, actions. */

import { api, seg } from "./api.js";
import { h, pretty, replace } from "./dom.js";
import {
  FINAL_STATES,
  between,
  formatDuration,
  formatTime,
  stateBadge,
  stateClass,
  timeCell,
} from "./format.js";
import { Poller } from "./live.js";
import { runStrip, suspension } from "./page-schedules.js";
import { actionButton, card, keyValues, messages } from "./widgets.js";

const POLL_MS = 3000;
const TIMELINE_RUNS = 25;
const COUNTS = [
  ["totalRunCount", "runs"],
  ["succeededRunCount", "succeeded"],
  ["failedRunCount", "failed"],
  ["skippedRunCount", "skipped"],
  ["missedRunCount", "missed"],
  ["excludedRunCount", "excluded"],
  ["consecutiveFailures", "failures in a row"],
];
const FAILURE_COUNTS = new Set(["failedRunCount", "consecutiveFailures"]);

/** A run's link (ids come from data). */
export function runHref(id) {
  return `#/runs/${encodeURIComponent(id)}`;
}

/** "2026-12-07T00:00:00Z" for a Date (to the second), as the API's backfill takes it. */
function rfc3339(date) {
  return date.toISOString().replace(/\.\d+Z$/, "Z");
}

/** The counts of status as tiles. */
function counts(status) {
  return h(
    "div",
    { class: "tiles", id: "counts" },
    COUNTS.map(([key, label]) =>
      h(
        "div",
        // Failures are red only when there are some.
        {
          class: FAILURE_COUNTS.has(key) && status[key] > 0 ? "tile bad" : "tile",
          "data-count": key,
        },
        h("span", { class: "tile-value" }, status[key] ?? "—"),
        h("span", { class: "tile-label" }, label),
      ),
    ),
  );
}

/** Every field of the spec: scalars as text, the rest as JSON. */
function specTable(spec) {
  return keyValues(
    Object.entries(spec).map(([key, value]) => [
      key,
      value !== null && typeof value === "object"
        ? h("pre", { class: "code inline" }, pretty(value))
        : h("span", { class: "mono" }, String(value)),
    ]),
  );
}

/** The next fire times, in the schedule's zone and in UTC. */
function previewList(preview) {
  if (!preview.items.length) return h("p", { class: "muted" }, "No fire time ahead.");
  return h(
    "table",
    { class: "grid compact", id: "preview" },
    h(
      "thead",
      null,
      h(
        "tr",
        null,
        h("th", null, `Local (${preview.timeZone})`),
        h("th", null, "UTC"),
        h("th", null, ""),
      ),
    ),
    h(
      "tbody",
      null,
      preview.items.map((slot) =>
        h(
          "tr",
          null,
          h("td", { class: "mono" }, slot.local),
          h("td", null, timeCell(slot.utc)),
          h("td", { class: "muted" }, slot.dst || ""),
        ),
      ),
    ),
  );
}

/**
 * Recent runs on a shared time axis: a light segment from the slot to the start (lateness),
 * a coloured one from start to end (duration). Sizes are set through CSSOM, which the CSP
 * allows (it forbids style attributes).
 */
function timeline(listed) {
  // By slot, newest first: a backfill's runs are created together but belong to their slots.
  const slotOf = (run) => run.scheduled_at || run.created_at || "";
  const runs = [...listed].sort((a, b) => slotOf(b).localeCompare(slotOf(a)));
  if (!runs.length) return h("p", { class: "muted", id: "timeline" }, "No runs yet.");
  const now = Date.now();
  const times = (run) => {
    const start = new Date(
      run.started_at || run.received_at || run.created_at || run.scheduled_at,
    ).getTime();
    const slot = new Date(run.scheduled_at || run.created_at || start).getTime();
    const end = run.finished_at
      ? new Date(run.finished_at).getTime()
      : FINAL_STATES.has(run.state)
        ? start
        : now;
    return { slot: Math.min(slot, start), start, end };
  };
  const spans = runs.map(times);
  const from = Math.min(...spans.map((s) => s.slot));
  const to = Math.max(...spans.map((s) => s.end), from + 1000);
  const pct = (t) => `${(((t - from) / (to - from)) * 100).toFixed(3)}%`;
  const rows = runs.map((run, i) => {
    const span = spans[i];
    const track = h("div", { class: "track" });
    const late = h("span", { class: "seg late" });
    late.style.left = pct(span.slot);
    late.style.width = pct(from + (span.start - span.slot));
    const ran = h("span", { class: `seg ${stateClass(run.state)}` });
    ran.style.left = pct(span.start);
    ran.style.width = pct(from + Math.max(span.end - span.start, 0));
    track.append(late, ran);
    // A run still going has lasted until now; one that never started has no duration.
    const duration = run.started_at ? span.end - span.start : null;
    return h(
      "tr",
      { "data-run": run.id, class: "run-row" },
      h("td", null, stateBadge(run.state)),
      h("td", null, h("a", { href: runHref(run.id), class: "mono" }, run.id.slice(0, 8))),
      h("td", null, run.source || "—"),
      h("td", null, formatTime(run.scheduled_at || run.created_at)),
      h(
        "td",
        { class: "num", title: "started after its slot" },
        formatDuration(between(run.scheduled_at, run.started_at)),
      ),
      h("td", { class: "num" }, formatDuration(duration)),
      h("td", { class: "track-cell" }, track),
    );
  });
  return h(
    "table",
    { class: "grid compact timeline", id: "timeline" },
    h(
      "thead",
      null,
      h(
        "tr",
        null,
        ["State", "Run", "Source", "Scheduled (UTC)", "Late", "Duration"].map((t) =>
          h("th", null, t),
        ),
        h(
          "th",
          null,
          h(
            "span",
            { class: "axis" },
            h("span", null, formatTime(new Date(from).toISOString())),
            h("span", null, formatTime(new Date(to).toISOString())),
          ),
        ),
      ),
    ),
    h("tbody", null, rows),
  );
}

/** Run now, with optional kwargs merged over the spec's. */
function runNowForm(namespace, name, notes, poller) {
  const kwargs = h("textarea", {
    id: "run-kwargs",
    rows: 3,
    placeholder: '{"key": "value"}',
    spellcheck: "false",
  });
  const run = async () => {
    const body = {};
    const text = kwargs.value.trim();
    if (text) {
      let parsed;
      try {
        parsed = JSON.parse(text);
      } catch (error) {
        throw new Error(`kwargs are not JSON: ${error.message}`);
      }
      if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
        throw new Error("kwargs must be a JSON object");
      }
      body.kwargs = parsed;
    }
    const done = await api("POST", `/schedules/${seg(namespace)}/${seg(name)}/trigger`, { body });
    if (done.id)
      notes.info("Run ", h("a", { href: runHref(done.id), class: "mono" }, done.id), " sent.");
    else
      notes.info(
        `Run-now requested (forwarder.dev/run-now=${done.runNow}); the operator fires it.`,
      );
    poller.refresh();
  };
  return h(
    "div",
    { class: "action" },
    actionButton("Run now", run, notes, { kind: "primary" }),
    h(
      "details",
      null,
      h("summary", null, "with kwargs"),
      h("label", { for: "run-kwargs" }, "kwargs (JSON object, merged over the spec's)"),
      kwargs,
    ),
  );
}

/** Backfill a past window [start, end). */
function backfillForm(namespace, name, notes, poller) {
  const now = new Date();
  now.setUTCMinutes(0, 0, 0);
  const start = h("input", {
    type: "text",
    id: "backfill-start",
    value: rfc3339(new Date(now.getTime() - 6 * 3600_000)),
    "aria-label": "start",
  });
  const end = h("input", {
    type: "text",
    id: "backfill-end",
    value: rfc3339(now),
    "aria-label": "end",
  });
  const send = async () => {
    const done = await api("POST", `/schedules/${seg(namespace)}/${seg(name)}/backfill`, {
      body: { start: start.value.trim(), end: end.value.trim() },
    });
    if (done.backfill) {
      notes.info(
        `Backfill requested (forwarder.dev/backfill=${done.backfill}); the operator reports it as an Event.`,
      );
    } else {
      notes.info(
        `Backfill ${done.window}: ${done.slots} slots, ${done.sent.length} sent, ` +
          `${done.alreadyRun.length} already run, ${done.leftToSchedule.length} left to the scheduler, ` +
          `${done.skipped.length} skipped.`,
      );
    }
    poller.refresh();
  };
  return h(
    "details",
    { class: "action backfill" },
    h("summary", { class: "btn" }, "Backfill…"),
    h(
      "div",
      { class: "backfill-form" },
      h("label", null, "start (RFC 3339)", start),
      h("label", null, "end (excluded, not after now)", end),
      actionButton("Backfill window", send, notes),
    ),
  );
}

/** Suspend or resume: spec.suspend by merge patch, or the resume route after failures. */
function suspendButton(item, notes, poller) {
  const { namespace, name } = item.metadata;
  const path = `/schedules/${seg(namespace)}/${seg(name)}`;
  const held = suspension(item);
  if (held === "after failures") {
    return actionButton(
      "Resume",
      async () => {
        const done = await api("POST", `${path}/resume`);
        // In a cluster the API only sets the annotation; the operator resumes it.
        if (done.resume)
          notes.info(
            `Resume requested (forwarder.dev/resume=${done.resume}); the operator resumes it.`,
          );
        else notes.info(`${namespace}/${name} resumed: it fires again from its next slot.`);
        poller.refresh();
      },
      notes,
      { title: "Resume after suspendAfterFailures" },
    );
  }
  const suspend = !item.spec.suspend;
  return actionButton(
    suspend ? "Suspend" : "Resume",
    async () => {
      await api("PATCH", path, { body: { spec: { suspend } } });
      notes.info(`${namespace}/${name} ${suspend ? "suspended" : "resumed"}.`);
      poller.refresh();
    },
    notes,
  );
}

/** Render a schedule's page; returns the function that stops its polling. */
export function schedulePage(namespace, name) {
  return (view) => {
    const notes = messages();
    const polling = messages();
    const path = `/schedules/${seg(namespace)}/${seg(name)}`;
    const head = h("div", { class: "page-head" });
    const actions = h("div", { class: "actions" });
    const condition = h("div", { class: "card condition" });
    const countsBox = h("div");
    const specBox = h("div");
    const previewBox = h("div");
    const runsBox = h("div");
    let shownActions = "";

    replace(
      view,
      h(
        "nav",
        { class: "crumbs" },
        h("a", { href: "#/schedules" }, "Schedules"),
        " / ",
        `${namespace}/${name}`,
      ),
      head,
      polling.element,
      notes.element,
      condition,
      actions,
      countsBox,
      h(
        "div",
        { class: "columns" },
        card("Recent runs", runsBox),
        h("div", { class: "side" }, card("Next 10 fire times", previewBox), card("Spec", specBox)),
      ),
    );

    const poller = new Poller(
      async (signal) => {
        // One request at a time: the schedule, then its runs, then the preview.
        const item = await api("GET", path, { signal });
        const runs = await api(
          "GET",
          `/runs?schedule=${seg(`${namespace}/${name}`)}&limit=${TIMELINE_RUNS}`,
          { signal },
        );
        const preview = await api("GET", `${path}/preview?count=10`, { signal });
        const status = item.status || {};
        replace(
          head,
          h("h1", null, h("span", { class: "ns" }, `${namespace}/`), name),
          h("span", { class: "mono muted" }, item.spec.task),
          suspension(item)
            ? h(
                "span",
                { class: "badge suspended" },
                `suspended ${suspension(item) === "after failures" ? "after failures" : ""}`.trim(),
              )
            : null,
          runStrip(status.recentRuns),
        );
        const ready = (status.conditions || []).find((c) => c.type === "Ready");
        replace(
          condition,
          keyValues([
            ["When", status.schedule || "—"],
            ["Zone", item.spec.timeZone || "UTC"],
            [
              "Ready",
              ready
                ? `${ready.status} · ${ready.reason}${ready.message ? ` — ${ready.message}` : ""}`
                : "—",
            ],
            [
              "Last run",
              h(
                "span",
                null,
                stateBadge(status.lastRun?.state),
                " ",
                timeCell(status.lastScheduleTime),
              ),
            ],
            ["Next run", timeCell(status.nextRunTime)],
            ["File", item.metadata.file || undefined],
          ]),
        );
        // Actions are rebuilt only when what they act on changed, so an open form survives.
        const key = `${item.spec.suspend}|${suspension(item)}`;
        if (key !== shownActions) {
          shownActions = key;
          replace(
            actions,
            runNowForm(namespace, name, notes, poller),
            suspendButton(item, notes, poller),
            backfillForm(namespace, name, notes, poller),
          );
        }
        replace(countsBox, counts(status));
        replace(specBox, specTable(item.spec));
        replace(previewBox, previewList(preview));
        replace(runsBox, timeline(runs.items));
      },
      { interval: POLL_MS, onError: (error) => polling.error(error), onOk: () => polling.clear() },
    ).start();
    return () => poller.stop();
  };
}
