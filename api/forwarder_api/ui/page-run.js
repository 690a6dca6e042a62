/** A run's page: arguments, result or error with traceback, worker, times, attempts, source. */

import { api, seg } from "./api.js";
import { h, pretty, replace } from "./dom.js";
import { FINAL_STATES, between, formatDuration, stateBadge, timeCell } from "./format.js";
import { Poller } from "./live.js";
import { scheduleHref } from "./page-schedules.js";
import { actionButton, card, keyValues, messages } from "./widgets.js";

// Under the API's longest wait (55 s) and common proxies' idle timeouts (60 s).
const WAIT_SECONDS = 25;
// Before the run has started (queued, or waiting to retry).
const QUEUED_WAIT_SECONDS = 2;

// What sent a run (the run record's source).
const SOURCES = {
  schedule: "fired by its schedule",
  trigger: "run now (API or the run-now annotation)",
  backfill: "a backfill",
  api: "submitted through the API",
};

function scheduleLink(schedule) {
  if (!schedule) return h("span", { class: "muted" }, "—");
  const [namespace, ...rest] = schedule.split("/");
  return h("a", { href: scheduleHref(namespace, rest.join("/")) }, schedule);
}

function outcome(run) {
  if (run.error) {
    return card(
      "Error",
      h(
        "p",
        { class: "error-line", id: "run-error" },
        `${run.error.type || "Error"}: ${run.error.message ?? ""}`,
      ),
      run.error.traceback
        ? h("pre", { class: "code traceback", id: "traceback" }, run.error.traceback)
        : h(
            "p",
            { class: "muted" },
            "The traceback is hidden: the API shows it only with FORWARDER_API_SHOW_TRACEBACK=true.",
          ),
    );
  }
  if (FINAL_STATES.has(run.state) || run.result !== null) {
    return card(
      run.result_truncated ? "Result (cut short)" : "Result",
      h("pre", { class: "code", id: "result" }, pretty(run.result)),
    );
  }
  return card(
    "Result",
    h("p", { class: "muted" }, "Not finished yet: this page updates when it ends."),
  );
}

function attemptsTable(attempts) {
  return h(
    "table",
    { class: "grid compact" },
    h(
      "thead",
      null,
      h(
        "tr",
        null,
        ["#", "State", "Started", "Finished", "Worker", "Error"].map((t) => h("th", null, t)),
      ),
    ),
    h(
      "tbody",
      null,
      attempts.map((a) =>
        h(
          "tr",
          null,
          h("td", { class: "num" }, a.attempt),
          h("td", null, stateBadge(a.state)),
          h("td", null, timeCell(a.started_at)),
          h("td", null, timeCell(a.finished_at)),
          h("td", { class: "mono" }, a.worker || "—"),
          h("td", null, a.error || ""),
        ),
      ),
    ),
  );
}

/** Render a run's page; returns the function that stops its long poll. */
export function runPage(id) {
  return (view) => {
    const notes = messages();
    const polling = messages();
    const head = h("div", { class: "page-head" });
    const actions = h("div", { class: "actions" });
    const body = h("div");
    replace(
      view,
      h("nav", { class: "crumbs" }, h("a", { href: "#/schedules" }, "Schedules"), " / run"),
      head,
      polling.element,
      notes.element,
      actions,
      body,
    );
    let shownFinal = null;

    const render = (run) => {
      const final = FINAL_STATES.has(run.state);
      replace(
        head,
        h("h1", null, run.task),
        stateBadge(run.state),
        h("span", { class: "mono muted", id: "run-id" }, run.id),
      );
      if (shownFinal !== final) {
        shownFinal = final;
        const terminate = h("input", { type: "checkbox", id: "terminate" });
        replace(
          actions,
          final
            ? null
            : [
                actionButton(
                  "Revoke",
                  async () => {
                    const done = await api(
                      "DELETE",
                      `/runs/${seg(id)}?terminate=${terminate.checked}`,
                    );
                    notes.info(
                      `Revoke sent (${done.terminate ? "terminating" : "dropping"} a ${done.state} run).`,
                    );
                    poller.refresh();
                  },
                  notes,
                  { kind: "danger" },
                ),
                h("label", { class: "check" }, terminate, "also stop it if running"),
              ],
        );
      }
      const started = run.started_at;
      replace(
        body,
        h(
          "div",
          { class: "columns" },
          h(
            "div",
            null,
            outcome(run),
            card(
              "Arguments",
              keyValues([
                ["args", h("pre", { class: "code inline", id: "args" }, pretty(run.args))],
                ["kwargs", h("pre", { class: "code inline", id: "kwargs" }, pretty(run.kwargs))],
                [
                  "run-now overrides",
                  run.overrides == null
                    ? undefined
                    : h("pre", { class: "code inline" }, pretty(run.overrides)),
                ],
              ]),
            ),
            run.attempts.length ? card("Attempts", attemptsTable(run.attempts)) : null,
          ),
          h(
            "div",
            { class: "side" },
            card(
              "Run",
              keyValues([
                [
                  "Source",
                  h(
                    "span",
                    { id: "run-source" },
                    run.source ? `${run.source} — ${SOURCES[run.source] || run.source}` : "—",
                  ),
                ],
                ["Schedule", scheduleLink(run.schedule)],
                ["Worker", h("span", { class: "mono", id: "run-worker" }, run.worker || "—")],
                ["Retries", String(run.retries)],
                ["Reason", run.reason || undefined],
                ["Next attempt", run.next_attempt_at ? timeCell(run.next_attempt_at) : undefined],
              ]),
            ),
            card(
              "Times (UTC)",
              keyValues([
                ["Scheduled", timeCell(run.scheduled_at)],
                ["Created", timeCell(run.created_at)],
                ["Received", timeCell(run.received_at)],
                ["Started", timeCell(started)],
                ["Finished", timeCell(run.finished_at)],
                ["Late", formatDuration(between(run.scheduled_at, started))],
                ["Queued", formatDuration(between(run.created_at, started))],
                ["Duration", formatDuration(between(started, run.finished_at))],
              ]),
            ),
          ),
        ),
      );
      return final;
    };

    // A long poll: the API answers as soon as the run ends, so no round is wasted while it
    // runs, and polling stops once it has ended. The API answers a wait only at the end, so
    // until the run has started a short one, or its start would show only after WAIT_SECONDS.
    let wait = 0;
    const poller = new Poller(
      async (signal) => {
        const run = await api("GET", `/runs/${seg(id)}?wait=${wait}`, { signal });
        wait = run.state === "STARTED" ? WAIT_SECONDS : QUEUED_WAIT_SECONDS;
        return render(run) ? false : 0;
      },
      { interval: 2000, onError: (error) => polling.error(error), onOk: () => polling.clear() },
    ).start();
    return () => poller.stop();
  };
}
