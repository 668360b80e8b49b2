// The portal's entry point: takes the session token from the URL fragment, then shows
// the views. Everything it shows comes from the public /v1 API with that token.

import { api, ApiError, eventTypes, setToken } from "./api.js";
import { h } from "./dom.js";
import * as views from "./views.js";

const STORAGE_KEY = "qr3.portal.session";

/** The session token: from the fragment the first time (then removed from the address
 * bar and history), from this tab's sessionStorage after a reload. */
function takeToken() {
  const fragment = decodeURIComponent(window.location.hash.slice(1));
  if (fragment.startsWith("qr3p_")) {
    try {
      window.sessionStorage.setItem(STORAGE_KEY, fragment);
    } catch (e) {
      // Storage refused (a sandboxed frame): the token lives in memory only.
    }
    window.history.replaceState(null, "", window.location.pathname + window.location.search);
    return fragment;
  }
  try {
    return window.sessionStorage.getItem(STORAGE_KEY);
  } catch (e) {
    return null;
  }
}

const main = document.getElementById("main");
const status = document.getElementById("status");
const alertBox = document.getElementById("alert");

const ctx = {
  readOnly: true,
  eventTypes: [],
  /** Shows a view: `go("webhook", id)`. Focus moves to its heading. */
  async go(name, ...args) {
    alertBox.textContent = "";
    const view = views[name];
    try {
      const node = await view(ctx, ...args);
      main.replaceChildren(node);
      const heading = main.querySelector("h2");
      if (heading) {
        heading.setAttribute("tabindex", "-1");
        heading.focus();
      }
    } catch (e) {
      ctx.fail(e);
    }
  },
  /** A polite message for everyone, screen readers included. */
  say(message) {
    status.textContent = message;
  },
  /** An error, announced at once. An ended session replaces the page. */
  fail(error) {
    if (error instanceof ApiError && error.status === 401) {
      try {
        window.sessionStorage.removeItem(STORAGE_KEY);
      } catch (e) {
        // Nothing stored.
      }
      main.replaceChildren(views.ended());
    }
    alertBox.textContent = error instanceof ApiError ? error.message : String(error);
  },
  api,
};

async function start() {
  const token = takeToken();
  if (!token) {
    main.replaceChildren(views.ended());
    return;
  }
  setToken(token);
  ctx.readOnly = token.startsWith("qr3p_ro_");
  document.getElementById("mode").hidden = !ctx.readOnly;
  document.getElementById("nav-webhooks").addEventListener("click", () => ctx.go("webhooks"));
  try {
    ctx.eventTypes = await eventTypes();
  } catch (e) {
    ctx.eventTypes = [];
  }
  await ctx.go("webhooks");
}

start().catch((e) => {
  main.replaceChildren(h("p", {}, "The portal could not start."));
  alertBox.textContent = String(e);
});
