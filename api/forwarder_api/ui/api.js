/**
 * The API client: every call goes to the API's own routes with the bearer token the user
 * signed in with, kept in sessionStorage (gone when the tab closes). No cookie is ever set or
 * sent (credentials: "omit"), so a page elsewhere cannot make the browser act for the user:
 * there is no CSRF surface.
 */

const TOKEN_KEY = "forwarder.token";
// The API's root: where /ui/ is served from, so the dashboard also works behind a path prefix.
const BASE = location.pathname.replace(/\/ui(\/.*)?$/, "");

/** An answer of the API that is not a success, with the API's own message. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

let onUnauthorized = () => {};

/** Called with the ApiError when the API answers 401 (the token is wrong or was rotated). */
export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** The message of an error body: {"detail": "..."} or FastAPI's list of validation errors. */
function messageOf(data, response) {
  const detail = data !== null && typeof data === "object" ? data.detail : data;
  if (Array.isArray(detail)) {
    return detail
      .map((item) => {
        const where = (item.loc || []).filter((part) => part !== "body").join(".");
        return where ? `${where}: ${item.msg}` : String(item.msg);
      })
      .join("; ");
  }
  if (typeof detail === "string" && detail) return detail;
  return `${response.status} ${response.statusText || "error"}`;
}

/**
 * Call the API and return its JSON (null when it has no body). Throws ApiError with the
 * API's message on any error status, and on a network failure (status 0).
 */
export async function api(method, path, { body, signal, quiet401 = false } = {}) {
  const headers = { Accept: "application/json" };
  const current = token();
  if (current) headers.Authorization = `Bearer ${current}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(BASE + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
      credentials: "omit",
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, `the API cannot be reached (${error.message})`);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!response.ok) {
    const error = new ApiError(response.status, messageOf(data, response));
    if (response.status === 401 && !quiet401) onUnauthorized(error);
    throw error;
  }
  return data;
}

/** A path segment, escaped for a URL (names come from data). */
export function seg(value) {
  return encodeURIComponent(value);
}
