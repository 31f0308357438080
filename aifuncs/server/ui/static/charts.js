// The endpoint page's charts: one request for the series (hourly rollups), four uPlot charts, UTC axes.
const ENTITY_COLORS = ["#2457d6", "#137a3a", "#7a42c8", "#a35a00", "#0e7490", "#be185d"];
const COLORS = { requests: "#2457d6", tokens: "#7a42c8", p50: "#137a3a", p99: "#a35a00", e4: "#a35a00", e5: "#b42318" };

function utcHours(u, splits) {
  return splits.map((s) => {
    const d = new Date(s * 1000);
    const hh = String(d.getUTCHours()).padStart(2, "0");
    return d.getUTCHours() === 0 ? `${d.getUTCMonth() + 1}/${d.getUTCDate()}` : `${hh}:00`;
  });
}

function chart(el, data, series, width) {
  return new uPlot({
    width, height: 180, tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
    legend: { show: true }, cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true } },
    axes: [{ values: utcHours, label: "UTC", labelSize: 18, size: 36 }, { size: 56 }],
    series: [{}, ...series],
  }, data, el);
}

document.addEventListener("DOMContentLoaded", async () => {
  const root = document.getElementById("charts");
  if (!root) return;
  const response = await fetch(root.dataset.series, { headers: { accept: "application/json" } });
  if (!response.ok) return;
  const s = await response.json();
  const box = (name) => root.querySelector(`[data-chart="${name}"]`);
  const width = Math.max(300, box("requests").clientWidth);
  chart(box("requests"), [s.x, s.requests], [{ label: "requests", stroke: COLORS.requests, fill: "#2457d61a" }], width);
  chart(box("tokens"), [s.x, s.tokens], [{ label: "tokens", stroke: COLORS.tokens, fill: "#7a42c81a" }], width);
  chart(box("latency"), [s.x, s.p50, s.p99], [
    { label: "p50 ms", stroke: COLORS.p50, spanGaps: true }, { label: "p99 ms", stroke: COLORS.p99, spanGaps: true },
  ], width);
  chart(box("errors"), [s.x, s.errors_4xx, s.errors_5xx], [
    { label: "4xx", stroke: COLORS.e4 }, { label: "5xx", stroke: COLORS.e5 },
  ], width);
  // one line per served entity that answered, and the requests a fallback answered
  const names = Object.keys(s.entities || {});
  if (box("entities")) {
    chart(box("entities"), [s.x, ...names.map((n) => s.entities[n]), s.fallbacks], [
      ...names.map((n, i) => ({ label: n, stroke: ENTITY_COLORS[i % ENTITY_COLORS.length] })),
      { label: "by a fallback", stroke: COLORS.e5, dash: [4, 4] },
    ], width);
  }
});
