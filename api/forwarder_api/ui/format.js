/** How times, durations and run states look on every page. */

import { h } from "./dom.js";

export const FINAL_STATES = new Set(["SUCCESS", "FAILURE", "REVOKED", "SKIPPED"]);
const KNOWN_STATES = new Set([
  "SUCCESS",
  "FAILURE",
  "STARTED",
  "RUNNING",
  "PENDING",
  "RECEIVED",
  "RETRY",
  "SKIPPED",
  "REVOKED",
]);

/** The CSS class of a state's colour (an unknown state gets the neutral one). */
export function stateClass(state) {
  return KNOWN_STATES.has(state) ? `state-${state}` : "state-unknown";
}

/** A coloured state label. */
export function stateBadge(state) {
  if (!state) return h("span", { class: "muted" }, "—");
  return h("span", { class: `badge ${stateClass(state)}` }, state);
}

function pad(n) {
  return String(n).padStart(2, "0");
}

/** "2026-12-07 00:41:02" in UTC (every time on the dashboard is UTC, as the API gives it). */
export function formatTime(iso) {
  if (!iso) return "—";
  const at = new Date(iso);
  if (Number.isNaN(at.getTime())) return String(iso);
  return (
    `${at.getUTCFullYear()}-${pad(at.getUTCMonth() + 1)}-${pad(at.getUTCDate())} ` +
    `${pad(at.getUTCHours())}:${pad(at.getUTCMinutes())}:${pad(at.getUTCSeconds())}`
  );
}

/**
 * "420 ms", "1.4 s", "42 s", "3 min 4 s", "2 h 5 min" ("—" for none). A run's times, its
 * slot included, come to the millisecond, so durations and lateness under ten seconds are
 * shown finer.
 */
export function formatDuration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  const sign = ms < 0 ? "-" : "";
  const abs = Math.abs(ms);
  if (abs < 1000) return `${sign}${Math.round(abs)} ms`;
  if (abs < 9950) return `${sign}${(abs / 1000).toFixed(1)} s`;
  const s = Math.round(abs / 1000);
  if (s < 60) return `${sign}${s} s`;
  if (s < 3600) return `${sign}${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86_400) return `${sign}${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${sign}${Math.floor(s / 86_400)} d ${Math.floor((s % 86_400) / 3600)} h`;
}

/** "in 3 min" / "12 s ago" relative to now (to the second under a minute, coarser above). */
export function relative(iso) {
  if (!iso) return "";
  const ms = new Date(iso).getTime() - Date.now();
  if (Number.isNaN(ms)) return "";
  const seconds = Math.round(Math.abs(ms) / 1000);
  if (seconds === 0) return "now";
  const text =
    seconds < 60 ? `${seconds} s` : formatDuration(seconds * 1000).replace(/ \d+ s$/, "");
  return ms >= 0 ? `in ${text}` : `${text} ago`;
}

/** A time with its relative form beside it; `compact`: only the relative form (for lists). */
export function timeCell(iso, { compact = false } = {}) {
  if (!iso) return h("span", { class: "muted" }, "—");
  if (compact) return h("span", { class: "time", title: `${formatTime(iso)} UTC` }, relative(iso));
  return h(
    "span",
    { class: "time", title: String(iso) },
    formatTime(iso),
    h("span", { class: "rel" }, relative(iso)),
  );
}

/** Milliseconds between two ISO times (null when either is missing). */
export function between(start, end) {
  if (!start || !end) return null;
  return new Date(end).getTime() - new Date(start).getTime();
}
