/**
 * The dashboard's entry: a hash router (#/schedules, #/schedules/<ns>/<name>, #/runs/<id>) so
 * one index.html serves every page, the sign-in form, and the header.
 */

import { api, ApiError, clearToken, setToken, setUnauthorizedHandler, token } from "./api.js";
import { h, replace } from "./dom.js";
import { runPage } from "./page-run.js";
import { schedulePage } from "./page-schedule.js";
import { schedulesPage } from "./page-schedules.js";
import { errorText } from "./widgets.js";

const view = document.getElementById("view");
const signOut = document.getElementById("sign-out");
let leave = () => {};
let signInMessage = "";

const ROUTES = [
  [/^#\/schedules\/?$/, () => schedulesPage],
  [/^#\/schedules\/([^/]+)\/([^/]+)$/, (m) => schedulePage(decode(m[1]), decode(m[2]))],
  [/^#\/runs\/([^/]+)$/, (m) => runPage(decode(m[1]))],
];

function decode(part) {
  return decodeURIComponent(part);
}

/** Show the page of the current hash (after stopping the previous page's polling). */
function route() {
  leave();
  leave = () => {};
  window.scrollTo(0, 0);
  const hash = location.hash || "#/schedules";
  signOut.hidden = !token();
  if (!token()) {
    signInForm();
    return;
  }
  for (const [pattern, page] of ROUTES) {
    const match = hash.match(pattern);
    if (match) {
      const render = page(match);
      leave = render(view) || (() => {});
      return;
    }
  }
  replace(
    view,
    h("div", { class: "empty" }, "No such page. ", h("a", { href: "#/schedules" }, "Schedules")),
  );
}

/** The sign-in form: a token is checked against a protected route before it is kept. */
function signInForm() {
  const input = h("input", {
    type: "password",
    id: "token",
    name: "token",
    autocomplete: "off",
    required: true,
    placeholder: "bearer token",
  });
  const error = h("p", { class: "form-error", id: "sign-in-error", role: "alert" }, signInMessage);
  const button = h("button", { type: "submit", class: "btn primary" }, "Sign in");
  const form = h(
    "form",
    { class: "sign-in card" },
    h("h1", null, "Sign in"),
    h(
      "p",
      { class: "muted" },
      "Paste an API token (one of FORWARDER_API_TOKENS; `forwarder up` prints it). It is " +
        "kept in this tab only and sent as Authorization: Bearer.",
    ),
    h("label", { for: "token" }, "API token"),
    input,
    error,
    button,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    setToken(input.value.trim());
    try {
      await api("GET", "/schedules", { quiet401: true });
      signInMessage = "";
      route();
    } catch (failure) {
      clearToken();
      replace(error, errorText(failure));
    } finally {
      button.disabled = false;
    }
  });
  replace(view, form);
  input.focus();
}

setUnauthorizedHandler((error) => {
  // A token that stopped working (rotated, or wrong): back to the form, saying why.
  clearToken();
  signInMessage = errorText(error instanceof ApiError ? error : String(error));
  route();
});

signOut.addEventListener("click", () => {
  clearToken();
  signInMessage = "";
  route();
});

window.addEventListener("hashchange", route);
route();
