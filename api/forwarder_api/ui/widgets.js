/** Small pieces every page uses: cards, key/value tables, messages, action buttons. */

import { h, replace } from "./dom.js";

/** A titled panel. */
export function card(title, ...children) {
  return h("section", { class: "card" }, title ? h("h2", null, title) : null, children);
}

/** A two-column table of [label, value] rows (rows with value undefined are left out). */
export function keyValues(rows) {
  return h(
    "table",
    { class: "kv" },
    h(
      "tbody",
      null,
      rows
        .filter(([, value]) => value !== undefined)
        .map(([label, value]) => h("tr", null, h("th", null, label), h("td", null, value))),
    ),
  );
}

/**
 * A message line: an API error (its own message, never swallowed), or news of an action that
 * worked. A page keeps one for its polling (cleared when the API answers again) and one for
 * the user's actions (kept until replaced or dismissed).
 */
export function messages() {
  const box = h("div", { class: "messages", role: "status", "aria-live": "polite" });
  const show = (kind, ...content) => {
    replace(
      box,
      h(
        "div",
        { class: `message ${kind}` },
        h("span", { class: "message-text" }, content),
        h("button", { type: "button", class: "link", onclick: () => box.replaceChildren() }, "×"),
      ),
    );
  };
  return {
    element: box,
    error: (error) => show("error", errorText(error)),
    info: (...content) => show("info", ...content),
    clear: () => box.replaceChildren(),
  };
}

/** What the user reads of an error: the API's message with its status. */
export function errorText(error) {
  if (error && error.name === "ApiError") {
    return error.status ? `${error.status}: ${error.message}` : error.message;
  }
  return String(error && error.message ? error.message : error);
}

/**
 * A button that runs an async action once at a time (disabled meanwhile), reporting its
 * error to `report` rather than losing it.
 */
export function actionButton(label, action, report, { kind = "", title } = {}) {
  const button = h("button", { type: "button", class: `btn ${kind}`, title }, label);
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await action();
    } catch (error) {
      report.error(error);
    } finally {
      button.disabled = false;
    }
  });
  return button;
}
