// The token of a token server: asked for once, kept in sessionStorage (this tab, until it is
// closed), sent only in the Authorization header and the websocket `hello` — never in a URL, a
// cookie, localStorage or the console.
import { $ } from "./dom.js";

const KEY = "latentbridge.token";

export function storedToken() {
  return sessionStorage.getItem(KEY);
}

export function forgetToken() {
  sessionStorage.removeItem(KEY);
}

/** Ask until `check(token)` accepts one; it resolves to the token (stored for this tab). */
export function askForToken(check, message = "") {
  const dialog = $("#token-dialog");
  const form = $("#token-form");
  const input = $("#token-input");
  const error = $("#token-error");
  error.textContent = message;
  input.value = "";
  return new Promise((resolve) => {
    form.onsubmit = async (event) => {
      event.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      error.textContent = "Checking…";
      try {
        if (await check(token)) {
          sessionStorage.setItem(KEY, token);
          input.value = "";
          dialog.close();
          resolve(token);
          return;
        }
        error.textContent = "The server refused this token.";
      } catch (e) {
        error.textContent = `Could not reach the server: ${e.message}`;
      }
    };
    dialog.oncancel = (event) => event.preventDefault(); // Escape does not close it: nothing works without a token
    dialog.showModal();
    input.focus();
  });
}
