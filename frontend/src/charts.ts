// Plots, all drawn by uPlot on canvas: lines along the stream (with domain boundaries marked),
// grouped bars per domain, and small per-epoch curves.

import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

export const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];

export interface LineSeries {
  label: string;
  x: number[];
  y: number[];
  color?: string;
  dash?: number[];
}

export interface Boundary {
  /** First x of the segment. */
  x: number;
  label: string;
}

export interface LineOpts {
  title?: string;
  xLabel: string;
  yLabel: string;
  /** Values are fractions; axes show percent. */
  pct?: boolean;
  boundaries?: Boundary[];
  height?: number;
}

/** Series on a shared x axis: the union of their x values, null where one has no value. */
function align(series: LineSeries[]): uPlot.AlignedData {
  const xs = Array.from(new Set(series.flatMap((s) => s.x))).sort((a, b) => a - b);
  const at = new Map(xs.map((x, i) => [x, i]));
  const ys = series.map((s) => {
    const y: (number | null)[] = new Array(xs.length).fill(null);
    s.x.forEach((x, i) => (y[at.get(x)!] = s.y[i]));
    return y;
  });
  return [xs, ...ys] as uPlot.AlignedData;
}

function boundaryPlugin(bs: Boundary[]): uPlot.Plugin {
  return {
    hooks: {
      draw: [
        (u: uPlot) => {
          const { ctx, bbox } = u;
          const dpr = devicePixelRatio || 1;
          ctx.save();
          ctx.strokeStyle = "#888";
          ctx.lineWidth = dpr;
          ctx.setLineDash([4 * dpr, 3 * dpr]);
          ctx.font = `${11 * dpr}px system-ui, sans-serif`;
          ctx.textBaseline = "top";
          const right = bbox.left + bbox.width;
          bs.forEach((b, i) => {
            const x = Math.round(u.valToPos(b.x, "x", true));
            if (x < bbox.left - 1 || x > right + 1) return;
            if (i > 0) {
              ctx.beginPath();
              ctx.moveTo(x, bbox.top);
              ctx.lineTo(x, bbox.top + bbox.height);
              ctx.stroke();
            }
            // The label sits at the top of its segment, cut to the segment's width.
            const end = i + 1 < bs.length ? Math.min(right, u.valToPos(bs[i + 1].x, "x", true)) : right;
            const room = end - x - 8 * dpr;
            if (room < 12 * dpr) return;
            let text = b.label;
            if (ctx.measureText(text).width > room) {
              while (text.length > 1 && ctx.measureText(text + "…").width > room) text = text.slice(0, -1);
              text += "…";
            }
            const w = ctx.measureText(text).width;
            ctx.fillStyle = "rgba(255,255,255,0.85)";
            ctx.fillRect(x + 2 * dpr, bbox.top + 2 * dpr, w + 4 * dpr, 13 * dpr);
            ctx.fillStyle = "#444";
            ctx.fillText(text, x + 4 * dpr, bbox.top + 3 * dpr);
          });
          ctx.restore();
        },
      ],
    },
  };
}

function widthOf(el: HTMLElement): number {
  return Math.max(320, Math.floor(el.getBoundingClientRect().width || el.parentElement?.clientWidth || 800));
}

/** Redraw at the container's width when the window resizes. */
function autosize(u: uPlot, el: HTMLElement, height: number): void {
  const ro = new ResizeObserver(() => {
    const w = widthOf(el);
    if (Math.abs(w - u.width) > 4) u.setSize({ width: w, height });
  });
  ro.observe(el);
}

export function lineChart(el: HTMLElement, series: LineSeries[], o: LineOpts): uPlot {
  const height = o.height ?? 320;
  const fmt = (v: number) => (o.pct ? `${(100 * v).toFixed(0)}%` : String(+v.toPrecision(4)));
  const opts: uPlot.Options = {
    title: o.title,
    width: widthOf(el),
    height,
    scales: { x: { time: false }, y: o.pct ? { range: (_u, _min, max) => [0, Math.min(1, Math.max(0.1, Math.ceil(max * 10) / 10))] } : {} },
    axes: [
      { label: o.xLabel, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000] },
      { label: o.yLabel, values: (_u, vals) => vals.map(fmt), size: 56 },
    ],
    series: [
      { label: o.xLabel },
      ...series.map((s, i) => ({
        label: s.label,
        stroke: s.color ?? COLORS[i % COLORS.length],
        width: 1.5,
        dash: s.dash,
        spanGaps: true,
        points: { show: s.x.length < 60 },
        value: (_u: uPlot, v: number | null) => (v === null ? "–" : o.pct ? `${(100 * v).toFixed(2)}%` : v.toPrecision(4)),
      })),
    ],
    plugins: o.boundaries?.length ? [boundaryPlugin(o.boundaries)] : [],
    legend: { live: true },
  };
  const u = new uPlot(opts, align(series), el);
  autosize(u, el, height);
  return u;
}

export interface BarGroup {
  label: string;
  values: (number | null)[];
  color?: string;
}

/** Grouped bars: one group of bars per category, one bar per series. */
export function barChart(el: HTMLElement, categories: string[], groups: BarGroup[], o: { yLabel: string; pct?: boolean; title?: string; height?: number }): uPlot {
  const height = o.height ?? 300;
  const n = groups.length;
  const bars = (gi: number): uPlot.Series.PathBuilder => (u, si, i0, i1) => {
    const p = new Path2D();
    const ys = u.data[si];
    const step = Math.abs(u.valToPos(1, "x", true) - u.valToPos(0, "x", true));
    const gw = step * 0.8;
    const bw = gw / n;
    const y0 = u.valToPos(0, "y", true);
    for (let i = i0; i <= i1; i++) {
      const v = ys[i];
      if (v === null || v === undefined) continue;
      const cx = u.valToPos(i, "x", true);
      const left = cx - gw / 2 + gi * bw;
      const top = u.valToPos(v, "y", true);
      p.rect(Math.round(left), Math.round(top), Math.max(1, Math.round(bw) - 1), Math.round(y0 - top));
    }
    return { stroke: p, fill: p };
  };
  const fmt = (v: number) => (o.pct ? `${(100 * v).toFixed(0)}%` : String(+v.toPrecision(4)));
  const opts: uPlot.Options = {
    title: o.title,
    width: widthOf(el),
    height,
    cursor: { points: { show: false } },
    scales: {
      x: { time: false, range: () => [-0.5, categories.length - 0.5] },
      y: { range: (_u, _min, max) => [0, o.pct ? Math.min(1, Math.max(0.1, Math.ceil(max * 10) / 10)) : max * 1.1] },
    },
    axes: [
      {
        splits: () => categories.map((_, i) => i),
        values: (_u, vals) => vals.map((v) => categories[v] ?? ""),
        rotate: categories.length > 6 ? -40 : 0,
        size: categories.length > 6 ? 90 : 40,
        grid: { show: false },
      },
      { label: o.yLabel, values: (_u, vals) => vals.map(fmt), size: 56 },
    ],
    series: [
      { label: "domain", value: (_u, v) => (v === null ? "–" : categories[v] ?? "") },
      ...groups.map((g, i) => {
        const c = g.color ?? COLORS[i % COLORS.length];
        return {
          label: g.label,
          stroke: c,
          fill: c + "cc",
          width: 0,
          paths: bars(i),
          points: { show: false },
          value: (_u: uPlot, v: number | null) => (v === null ? "–" : o.pct ? `${(100 * v).toFixed(2)}%` : v.toPrecision(4)),
        };
      }),
    ],
  };
  const data = [categories.map((_, i) => i), ...groups.map((g) => g.values)] as uPlot.AlignedData;
  const u = new uPlot(opts, data, el);
  autosize(u, el, height);
  return u;
}

/** Centered moving average over `w` points within each run of equal `segment` values. */
export function smooth(y: number[], w: number, segment?: number[]): number[] {
  if (w <= 1) return y.slice();
  const h = Math.floor(w / 2);
  return y.map((_, i) => {
    let a = Math.max(0, i - h);
    let b = Math.min(y.length, i + h + 1);
    if (segment) {
      while (segment[a] !== segment[i]) a++;
      while (segment[b - 1] !== segment[i]) b--;
    }
    let s = 0;
    for (let k = a; k < b; k++) s += y[k];
    return s / (b - a);
  });
}
