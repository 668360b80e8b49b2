// The portal's views. Each takes the context (`ctx`: the API, whether the session is
// read-only, the event types, navigation and messages) and returns a node to show.
// A read-only session gets no control that changes anything; the API refuses it anyway.

import { ApiError, withQuery } from "./api.js";
import { statsChart } from "./chart.js";
import { field, h, uid, when } from "./dom.js";

const PAGE = 20;

function button(label, onclick, attrs) {
  return h("button", { type: "button", onclick, ...(attrs || {}) }, label);
}

function section(title, ...children) {
  const id = uid("s");
  return h("section", { "aria-labelledby": id }, h("h3", { id }, title), children);
}

function badge(ok, yes, no) {
  return h("span", { class: ok ? "badge good" : "badge bad" }, ok ? yes : no);
}

/** Runs `action` while `control` is disabled; errors go to the alert region. */
async function busy(ctx, control, action) {
  control.disabled = true;
  try {
    await action();
  } catch (e) {
    ctx.fail(e);
  } finally {
    control.disabled = false;
  }
}

/** Shown when there is no session, or it ended. */
export function ended() {
  return h(
    "div",
    { class: "ended" },
    h("h2", {}, "Your session has ended"),
    h("p", {}, "Open the webhooks portal again from your qr3.app dashboard."),
  );
}

/** The workspace's webhooks, newest first. */
export async function webhooks(ctx) {
  const body = h("tbody");
  const table = h(
    "table",
    { id: "webhooks" },
    h("caption", { class: "visually-hidden" }, "Your webhooks"),
    h("thead", {}, h("tr", {}, ["URL", "Events", "Status", "Actions"].map((t) => h("th", { scope: "col" }, t)))),
    body,
  );
  const more = button("More webhooks", null, { hidden: true });
  let cursor = null;
  async function load() {
    const page = (await ctx.api("GET", withQuery("/v1/webhooks", { limit: PAGE, cursor }))).body;
    for (const webhook of page.data) {
      body.append(
        h(
          "tr",
          {},
          h("td", { class: "url" }, webhook.url),
          h("td", {}, webhook.events.join(", ")),
          h("td", {}, badge(webhook.is_active, "Active", "Disabled")),
          h(
            "td",
            {},
            button("Open", () => ctx.go("webhook", webhook.id), {
              class: "open-webhook",
              "aria-label": `Open webhook ${webhook.url}`,
            }),
          ),
        ),
      );
    }
    cursor = page.next_cursor;
    more.hidden = !page.has_more;
    return page.data.length;
  }
  more.addEventListener("click", () => busy(ctx, more, load));
  const count = await load();
  return h(
    "div",
    {},
    h("div", { class: "heading" }, h("h2", {}, "Webhooks"), ctx.readOnly ? null : button("New webhook", () => ctx.go("create"), { class: "primary", id: "new-webhook" })),
    count === 0 ? h("p", { class: "empty", id: "no-webhooks" }, "No webhooks yet.") : table,
    more,
  );
}

/** Checkboxes for the event types, `*` first; returns the fieldset and a reader. */
function eventChoices(ctx, chosen) {
  const names = ["*", ...ctx.eventTypes];
  const boxes = names.map((name) => {
    const box = h("input", { type: "checkbox", value: name, id: uid("ev"), checked: chosen.includes(name) });
    const label = name === "*" ? "All events (*)" : name;
    return { box, node: h("div", { class: "check" }, box, h("label", { for: box.id }, label)) };
  });
  const fieldset = h("fieldset", { class: "events" }, h("legend", {}, "Event types"), boxes.map((b) => b.node));
  const read = () => boxes.filter((b) => b.box.checked).map((b) => b.box.value);
  return { fieldset, read };
}

/** A secret, shown once, in both forms. */
function secretPanel(secret, whsec, previousExpiresAt) {
  return h(
    "div",
    { class: "secret", id: "secret" },
    h("dl", {}, [
      h("dt", {}, "Secret (X-QR3-Signature)"),
      h("dd", {}, h("code", {}, secret)),
      h("dt", {}, "Standard Webhooks secret (webhook-signature)"),
      h("dd", {}, h("code", {}, whsec)),
      h("dt", {}, "Previous secret signs until"),
      h("dd", {}, previousExpiresAt ? when(previousExpiresAt) : "No grace period running"),
    ]),
    h("p", { class: "hint" }, "Keep it secret: store it where your receiver reads it."),
  );
}

/** The form for a new webhook. */
export async function create(ctx) {
  const url = h("input", { type: "url", name: "url", required: true, autocomplete: "off", placeholder: "https://example.com/webhooks/qr3" });
  const rate = h("input", { type: "number", name: "max_per_second", min: 1, max: 10000, inputmode: "numeric" });
  const events = eventChoices(ctx, []);
  const result = h("div", { "aria-live": "polite" });
  const submit = h("button", { type: "submit", class: "primary" }, "Create webhook");
  const form = h(
    "form",
    { novalidate: true },
    field("Endpoint URL", url, "Where qr3 POSTs the events: an https URL your server answers."),
    events.fieldset,
    field("Most deliveries per second (optional)", rate),
    submit,
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(ctx, submit, async () => {
      const body = { url: url.value.trim(), events: events.read() };
      if (rate.value) body.max_per_second = Number(rate.value);
      const created = (await ctx.api("POST", "/v1/webhooks", body)).body;
      ctx.say("Webhook created.");
      form.hidden = true;
      result.replaceChildren(
        h("p", {}, "Webhook created. Its secret is shown this once:"),
        secretPanel(created.secret, created.secret_whsec, null),
        button("Open the webhook", () => ctx.go("webhook", created.id), { class: "primary", id: "open-created" }),
      );
    });
  });
  return h("div", {}, h("h2", {}, "New webhook"), form, result);
}

/** One webhook: its settings, secret, stats, delivery log and recovery. */
export async function webhook(ctx, id) {
  const [hook, stats] = await Promise.all([
    ctx.api("GET", `/v1/webhooks/${encodeURIComponent(id)}`).then((r) => r.body),
    ctx.api("GET", `/v1/webhooks/${encodeURIComponent(id)}/stats`).then((r) => r.body),
  ]);
  const parts = [
    h("h2", {}, "Webhook"),
    h("p", { class: "url big" }, hook.url),
    summary(hook),
  ];
  if (!ctx.readOnly) parts.push(controls(ctx, hook), secretSection(ctx, hook));
  parts.push(section("Stats", statsChart(stats)));
  parts.push(await deliveriesSection(ctx, hook));
  if (!ctx.readOnly) parts.push(recoverSection(ctx, hook));
  return h("div", { id: "webhook" }, parts);
}

function summary(hook) {
  return h("dl", { class: "summary" }, [
    h("dt", {}, "Status"),
    h("dd", {}, badge(hook.is_active, "Active", "Disabled"), hook.disabled_reason ? ` — ${hook.disabled_reason}` : ""),
    h("dt", {}, "Events"),
    h("dd", {}, hook.events.join(", ")),
    h("dt", {}, "Most deliveries per second"),
    h("dd", {}, hook.max_per_second === null ? "No cap" : String(hook.max_per_second)),
    h("dt", {}, "Secret"),
    h("dd", {}, h("code", {}, hook.secret_hint)),
    h("dt", {}, "Created"),
    h("dd", {}, when(hook.created_at)),
  ]);
}

function controls(ctx, hook) {
  const path = `/v1/webhooks/${encodeURIComponent(hook.id)}`;
  const outcome = h("div", { id: "ping-outcome", "aria-live": "polite" });
  const toggle = button(hook.is_active ? "Disable" : "Enable", () =>
    busy(ctx, toggle, async () => {
      await ctx.api("PATCH", path, { is_active: !hook.is_active });
      ctx.say(hook.is_active ? "Webhook disabled." : "Webhook enabled.");
      await ctx.go("webhook", hook.id);
    }),
    { id: "toggle" },
  );
  const ping = button("Send test ping", () =>
    busy(ctx, ping, async () => {
      const result = (await ctx.api("POST", `${path}/ping`)).body;
      const d = result.delivery;
      outcome.replaceChildren(
        d
          ? h("p", {}, "Ping ", badge(d.status === "success", "delivered", "failed"), ` — ${d.status_code ?? d.error ?? "no response"} in ${d.response_time_ms} ms`)
          : h("p", {}, `Ping ${result.event_id} queued; it will appear in the delivery log.`),
      );
    }),
    { id: "ping" },
  );
  const edit = button("Edit", () => {
    editor.hidden = !editor.hidden;
    edit.setAttribute("aria-expanded", String(!editor.hidden));
  }, { "aria-expanded": "false", "aria-controls": "edit-form" });
  const confirmDelete = button("Yes, delete it", () =>
    busy(ctx, confirmDelete, async () => {
      await ctx.api("DELETE", path);
      ctx.say("Webhook deleted.");
      await ctx.go("webhooks");
    }),
    { class: "danger", hidden: true, id: "confirm-delete" },
  );
  const del = button("Delete", () => {
    confirmDelete.hidden = false;
    confirmDelete.focus();
  }, { class: "danger", id: "delete" });
  const editor = editForm(ctx, hook);
  return section(
    "Manage",
    h("div", { class: "actions" }, toggle, edit, ping, del, confirmDelete),
    editor,
    outcome,
  );
}

function editForm(ctx, hook) {
  const url = h("input", { type: "url", value: hook.url, required: true, autocomplete: "off" });
  const rate = h("input", { type: "number", min: 1, max: 10000, value: hook.max_per_second ?? "", inputmode: "numeric" });
  const events = eventChoices(ctx, hook.events);
  const submit = h("button", { type: "submit", class: "primary" }, "Save changes");
  const form = h(
    "form",
    { id: "edit-form", hidden: true, novalidate: true },
    field("Endpoint URL", url),
    events.fieldset,
    field("Most deliveries per second (empty: no cap)", rate),
    submit,
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(ctx, submit, async () => {
      await ctx.api("PATCH", `/v1/webhooks/${encodeURIComponent(hook.id)}`, {
        url: url.value.trim(),
        events: events.read(),
        max_per_second: rate.value ? Number(rate.value) : null,
      });
      ctx.say("Webhook saved.");
      await ctx.go("webhook", hook.id);
    });
  });
  return form;
}

function secretSection(ctx, hook) {
  const path = `/v1/webhooks/${encodeURIComponent(hook.id)}`;
  const shown = h("div", { "aria-live": "polite" });
  const reveal = button("Reveal secret", () =>
    busy(ctx, reveal, async () => {
      const s = (await ctx.api("GET", `${path}/secret`)).body;
      shown.replaceChildren(secretPanel(s.secret, s.secret_whsec, s.previous_secret_expires_at));
    }),
    { id: "reveal" },
  );
  const rotate = button("Rotate secret", () =>
    busy(ctx, rotate, async () => {
      const w = (await ctx.api("POST", `${path}/rotate-secret`)).body;
      ctx.say("Secret rotated.");
      shown.replaceChildren(
        h("p", {}, "New secret. The previous one keeps signing webhook-signature until the time below, so your receiver can switch without losing a delivery."),
        secretPanel(w.secret, w.secret_whsec, w.previous_secret_expires_at),
      );
    }),
    { id: "rotate" },
  );
  return section("Signing secret", h("div", { class: "actions" }, reveal, rotate), shown);
}

function statusText(d) {
  if (d.status_code !== null) return String(d.status_code);
  return d.error || "no response";
}

async function deliveriesSection(ctx, hook) {
  const base = `/v1/webhooks/${encodeURIComponent(hook.id)}/deliveries`;
  const statusFilter = h("select", {}, [
    h("option", { value: "" }, "Any"),
    h("option", { value: "success" }, "Succeeded"),
    h("option", { value: "failed" }, "Failed"),
  ]);
  const typeFilter = h("select", {}, [h("option", { value: "" }, "Any"), ctx.eventTypes.map((t) => h("option", { value: t }, t))]);
  const body = h("tbody");
  const table = h(
    "table",
    { id: "deliveries" },
    h("caption", { class: "visually-hidden" }, "Delivery attempts, newest first"),
    h(
      "thead",
      {},
      h("tr", {}, ["Time", "Event", "Type", "Outcome", "Attempt", "Took", "Details"].map((t) => h("th", { scope: "col" }, t))),
    ),
    body,
  );
  const empty = h("p", { class: "empty", hidden: true }, "No deliveries match.");
  const next = button("Next page", null, { id: "next-page" });
  const first = button("First page", null, { id: "first-page" });
  let cursor = null;
  async function load(from) {
    const page = (
      await ctx.api(
        "GET",
        withQuery(base, { status: statusFilter.value, event_type: typeFilter.value, limit: PAGE, cursor: from }),
      )
    ).body;
    body.replaceChildren(
      ...page.data.map((d) =>
        h(
          "tr",
          { "data-delivery": d.id },
          h("td", {}, when(d.created_at)),
          h("td", { class: "mono" }, d.event_id),
          h("td", {}, d.event_type),
          h("td", {}, badge(d.status === "success", "success", "failed"), ` ${statusText(d)}`),
          h("td", {}, `${d.attempt} (${d.trigger})`),
          h("td", {}, `${d.response_time_ms} ms`),
          h(
            "td",
            {},
            button("Open", () => ctx.go("delivery", hook.id, d.id), {
              class: "open-delivery",
              "aria-label": `Open attempt ${d.attempt} of ${d.event_id}`,
            }),
          ),
        ),
      ),
    );
    empty.hidden = page.data.length > 0;
    table.hidden = page.data.length === 0;
    cursor = page.next_cursor;
    next.hidden = !page.has_more;
    first.hidden = !from;
  }
  next.addEventListener("click", () => busy(ctx, next, () => load(cursor)));
  first.addEventListener("click", () => busy(ctx, first, () => load(null)));
  const filters = h(
    "form",
    { class: "filters", novalidate: true },
    field("Outcome", statusFilter),
    field("Event type", typeFilter),
    h("button", { type: "submit" }, "Filter"),
  );
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    load(null).catch((e) => ctx.fail(e));
  });
  await load(null);
  return section("Delivery log", filters, table, empty, h("div", { class: "actions" }, first, next));
}

function recoverSection(ctx, hook) {
  const since = h("input", { type: "datetime-local", required: true, step: 1 });
  const submit = h("button", { type: "submit" }, "Re-send failed events");
  const result = h("div", { id: "recover-outcome", "aria-live": "polite" });
  const form = h(
    "form",
    { novalidate: true },
    field("Failed since (your local time)", since, "Each event whose last attempt since then failed, and that was never delivered, is sent once more."),
    submit,
  );
  async function recover(body) {
    const answer = (await ctx.api("POST", `/v1/webhooks/${encodeURIComponent(hook.id)}/recover`, body)).body;
    const more = answer.has_more
      ? button("Queue the next ones", (e) => busy(ctx, e.currentTarget, () => recover({ cursor: answer.next_cursor })))
      : null;
    result.replaceChildren(h("p", {}, `Queued ${answer.queued} event${answer.queued === 1 ? "" : "s"} for one more attempt.`), more);
    ctx.say(`Queued ${answer.queued} events.`);
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!since.value) {
      ctx.fail(new Error("Choose the time to recover from."));
      return;
    }
    busy(ctx, submit, () => recover({ since: new Date(since.value).toISOString() }));
  });
  return section("Recover", form, result);
}

/** One attempt in detail: what was sent, what came back, and a resend. */
export async function delivery(ctx, webhookId, deliveryId) {
  const path = `/v1/webhooks/${encodeURIComponent(webhookId)}/deliveries/${encodeURIComponent(deliveryId)}`;
  const d = (await ctx.api("GET", path)).body;
  const headers = Object.entries((d.request && d.request.headers) || {});
  const parts = [
    h("h2", {}, `Attempt ${d.attempt} of ${d.event_id}`),
    button("Back to the webhook", () => ctx.go("webhook", webhookId), { class: "link", id: "back" }),
    h("dl", { class: "summary" }, [
      h("dt", {}, "Outcome"),
      h("dd", {}, badge(d.status === "success", "success", "failed"), ` ${statusText(d)}`),
      h("dt", {}, "Event type"),
      h("dd", {}, d.event_type),
      h("dt", {}, "Trigger"),
      h("dd", {}, d.trigger),
      h("dt", {}, "Took"),
      h("dd", {}, `${d.response_time_ms} ms`),
      h("dt", {}, "Sent"),
      h("dd", {}, when(d.created_at)),
    ]),
    section(
      "Request",
      headers.length
        ? h(
            "table",
            { class: "headers" },
            h("caption", { class: "visually-hidden" }, "Request headers"),
            h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Header"), h("th", { scope: "col" }, "Value"))),
            h("tbody", {}, headers.map(([name, value]) => h("tr", {}, h("td", { class: "mono" }, name), h("td", { class: "mono" }, value)))),
          )
        : h("p", {}, "Not kept for this attempt."),
      d.request ? h("pre", { id: "request-body", tabindex: 0, "aria-label": "Request body" }, d.request.body) : null,
    ),
    section(
      "Response",
      d.response_body === null ? h("p", {}, "No response body kept.") : h("pre", { id: "response-body", tabindex: 0, "aria-label": "Response body" }, d.response_body),
    ),
  ];
  if (!ctx.readOnly && d.trigger !== "ping") parts.push(resendSection(ctx, webhookId, d));
  return h("div", { id: "delivery" }, parts);
}

function resendSection(ctx, webhookId, d) {
  const path = `/v1/webhooks/${encodeURIComponent(webhookId)}/deliveries/${encodeURIComponent(d.id)}/retry`;
  const outcome = h("div", { id: "retry-outcome", "aria-live": "polite" });
  async function send(force, control) {
    await busy(ctx, control, async () => {
      try {
        const result = (await ctx.api("POST", path, force ? { force: true } : undefined)).body;
        const made = result.delivery;
        outcome.replaceChildren(
          made
            ? h(
                "p",
                {},
                "Sent again: ",
                badge(made.status === "success", "success", "failed"),
                ` ${statusText(made)} in ${made.response_time_ms} ms. `,
                button("Open the new attempt", () => ctx.go("delivery", webhookId, made.id), { class: "link" }),
              )
            : h("p", {}, "Queued: the attempt will appear in the delivery log."),
        );
      } catch (e) {
        if (e instanceof ApiError && e.status === 409 && !force && e.message.includes("already delivered")) {
          outcome.replaceChildren(
            h("p", {}, "This event was already delivered. Send it again anyway?"),
            button("Resend anyway", (ev) => send(true, ev.currentTarget), { id: "force-resend" }),
          );
          return;
        }
        throw e;
      }
    });
  }
  const delivered = d.status === "success";
  const retry = button(delivered ? "Resend" : "Retry", (ev) => send(delivered, ev.currentTarget), { id: "retry", class: "primary" });
  return section(
    delivered ? "Resend" : "Retry",
    h("p", { class: "hint" }, delivered
      ? "The receiver answered 2xx. Resend it if it lost the event: a new attempt, signed like any other."
      : "Send this event once more now, with a fresh signature."),
    retry,
    outcome,
  );
}
