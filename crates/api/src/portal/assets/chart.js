// The stats as a small SVG chart: success rate per window, and latency percentiles.

import { h, svg } from "./dom.js";

const WIDTH = 320;
const BAR = 18;
const GAP = 8;
const LABEL = 110;

function bars(title, rows, max, unit) {
  const height = rows.length * (BAR + GAP) + GAP;
  const plot = WIDTH - LABEL - 60;
  const chart = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${height}`,
    width: WIDTH,
    height,
    role: "img",
    "aria-label": `${title}: ${rows.map((r) => `${r.label} ${r.text}`).join(", ")}`,
    class: "chart",
  });
  rows.forEach((row, i) => {
    const y = GAP + i * (BAR + GAP);
    const length = row.value === null || max === 0 ? 0 : Math.max(1, (row.value / max) * plot);
    chart.append(
      svg("text", { x: 0, y: y + BAR - 5, class: "chart-label" }, row.label),
      svg("rect", { x: LABEL, y, width: plot, height: BAR, class: "chart-track" }),
      svg("rect", { x: LABEL, y, width: length, height: BAR, class: `chart-bar ${row.kind || ""}` }),
      svg("text", { x: LABEL + plot + 6, y: y + BAR - 5, class: "chart-value" }, row.text),
    );
  });
  return h("figure", { class: "figure" }, h("figcaption", {}, title), chart);
}

function ratio(window) {
  return window.success_ratio === null ? null : window.success_ratio * 100;
}

function percent(value) {
  return value === null ? "no attempts" : `${value.toFixed(1)}%`;
}

/** The chart of a `GET /v1/webhooks/{id}/stats` answer. */
export function statsChart(stats) {
  const hour = stats.last_hour;
  const day = stats.last_day;
  const success = bars(
    "Success rate",
    [
      { label: `Last hour (${hour.attempts})`, value: ratio(hour), text: percent(ratio(hour)), kind: "good" },
      { label: `Last day (${day.attempts})`, value: ratio(day), text: percent(ratio(day)), kind: "good" },
    ],
    100,
  );
  const latency = day.latency_ms;
  const values = [latency.p50, latency.p90, latency.p99].filter((v) => v !== null);
  const max = values.length ? Math.max(...values) : 0;
  const ms = (v) => (v === null ? "—" : `${v} ms`);
  const percentiles = bars(
    "Latency over the last day",
    [
      { label: "p50", value: latency.p50, text: ms(latency.p50) },
      { label: "p90", value: latency.p90, text: ms(latency.p90) },
      { label: "p99", value: latency.p99, text: ms(latency.p99), kind: "slow" },
    ],
    max,
  );
  return h("div", { class: "charts" }, success, percentiles);
}
