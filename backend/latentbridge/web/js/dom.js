// Tiny DOM helpers. Text always goes in as text (textContent), never as HTML: prompts and error
// messages come from other clients and must not become markup.

/** h("div.card", {onclick, title}, child, "text", ...) → an element. */
export function h(tag, props = {}, ...children) {
  const [name, ...classes] = tag.split(".");
  const el = document.createElement(name || "div");
  if (classes.length) el.className = classes.join(" ");
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key in el && key !== "list" && key !== "form") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

/** A short notice at the bottom of the page; errors stay until clicked. */
export function toast(message, kind = "info") {
  const box = $("#toasts");
  const el = h(`div.toast.${kind}`, { role: kind === "error" ? "alert" : "status", onclick: () => el.remove() }, message);
  box.append(el);
  if (kind !== "error") setTimeout(() => el.remove(), 4000);
}

export function when(seconds) {
  if (!seconds) return "";
  const date = new Date(seconds * 1000);
  return date.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

export function clip(text, n) {
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}

/** Copy text; a page not in a secure context (plain http beyond localhost) has no clipboard API. */
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = h("textarea.offscreen", { value: text, readOnly: true });
  document.body.append(area);
  area.select();
  const ok = document.execCommand("copy");
  area.remove();
  if (!ok) throw new Error("the browser refused to copy");
}
