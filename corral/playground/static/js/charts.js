// charts.js: the latency chart of the Analytics tab (uPlot, vendored).
// Owns: turning a list of timed events into a time-series chart of total latency and time to first
// token, sized to its container and redrawn when that resizes, in the page's light or dark colours.

import uPlot from "../vendor/uPlot.esm.js";
import { h } from "./ui.js";

const charts = new Set();
const observer = new ResizeObserver((entries) => {
  for (const entry of entries) {
    const chart = entry.target.chart;
    const width = Math.floor(entry.contentRect.width);
    if (chart && width > 0 && Math.abs(chart.width - width) > 1) chart.setSize({ width, height: chart.height });
  }
});

const tick = (ms) => (ms >= 1000 ? `${+(ms / 1000).toFixed(2)} s` : `${+ms.toFixed(1)} ms`);

function colour(name, fallback) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;
}

/**
 * Chart `points` ([{ts (ms), total, first}], any order) into `container` (replacing what was there).
 * Returns the chart, or null when there is nothing to draw.
 */
export function latencyChart(container, points, { firstLabel = "First token" } = {}) {
  for (const chart of charts) {
    if (chart.root.parentNode === container || !chart.root.isConnected) { chart.destroy(); charts.delete(chart); }
  }
  const rows = points.filter((p) => typeof p.total === "number").sort((a, b) => a.ts - b.ts);
  if (!rows.length) {
    container.replaceChildren(h("p", { class: "muted" }, "No timed events yet."));
    return null;
  }
  container.replaceChildren();
  const axis = colour("--muted", "#666");
  const grid = colour("--line", "#ddd");
  const data = [rows.map((p) => p.ts / 1000), rows.map((p) => p.total), rows.map((p) => (typeof p.first === "number" ? p.first : null))];
  const opts = {
    width: Math.max(280, Math.floor(container.clientWidth || 600)),
    height: 220,
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(10, max * 1.1)] } },
    series: [
      {},
      { label: "Total (ms)", stroke: colour("--accent", "#2f6f4f"), width: 2, points: { show: true, size: 5 } },
      { label: `${firstLabel} (ms)`, stroke: colour("--warn", "#c07b22"), width: 1.5, dash: [4, 3], points: { show: true, size: 4 } },
    ],
    axes: [
      { stroke: axis, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid } },
      { stroke: axis, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid }, size: 64, values: (u, vals) => vals.map(tick) },
    ],
    legend: { live: true },
    cursor: { drag: { x: false, y: false } },
  };
  const chart = new uPlot(opts, data, container);
  container.chart = chart;
  observer.observe(container);
  charts.add(chart);
  return chart;
}
