/**
 * Building the DOM from data safely: text goes in as text nodes (textContent), never as HTML,
 * so a run result of "<script>...</script>" is shown, not run. Nothing here uses innerHTML.
 */

/**
 * h("a", {class: "x", href: "#/..."}, child, ...): an element. Props named on<event> take a
 * function (a string handler would be inline script); children are nodes or text.
 */
export function h(tag, props, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") {
      element.className = value;
    } else if (key.startsWith("on")) {
      if (typeof value !== "function") throw new TypeError(`${key} must be a function`);
      element.addEventListener(key.slice(2), value);
    } else if (key === "style") {
      throw new TypeError("no style attributes: the CSP forbids inline style");
    } else if (key === "value" || key === "checked" || key === "disabled") {
      element[key] = value;
    } else {
      element.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(element, children);
  return element;
}

/** Append children (nodes, text, nested arrays; null and false are skipped). */
export function append(element, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** Replace an element's children. */
export function replace(element, ...children) {
  element.replaceChildren();
  return append(element, children);
}

/** A value as readable JSON text (for <pre>), or "—" when absent. */
export function pretty(value) {
  if (value === undefined || value === null) return "—";
  if (typeof value === "string") return value;
  return JSON.stringify(value, null, 2);
}
