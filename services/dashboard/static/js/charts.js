/* Small live time charts, drawn by uPlot (vendored under ../vendor/uplot, MIT), and the rolling
   buckets they plot: counts or amounts per fixed step of time over a sliding window (the overview's
   last 15 minutes), or gauge readings taken when they were read. */

import uPlot from '../vendor/uplot/uPlot.esm.js';

export const COLORS = {
  blue: '#2f6fde', green: '#2e9d50', orange: '#d9822b', purple: '#8e44ad', red: '#c0392b',
  teal: '#16a085', grey: '#7f8c8d',
};

/** Per-step totals of named series over the last `windowS` seconds, keyed by step number. */
export class Buckets {
  constructor(names, {windowS = 900, stepS = 5} = {}) {
    this.windowS = windowS;
    this.stepS = stepS;
    this.series = Object.fromEntries(names.map((name) => [name, new Map()]));
    this.gauges = new Set();
  }

  step(timeMs) {
    return Math.floor(timeMs / 1000 / this.stepS);
  }

  /** Add `amount` to series `name` in the step of `timeMs` (an event's time). */
  add(name, timeMs, amount = 1) {
    const map = this.series[name];
    const key = this.step(timeMs);
    map.set(key, (map.get(key) || 0) + amount);
  }

  /** Record a reading of gauge `name` at `timeMs` (the last reading of a step wins). */
  read(name, timeMs, value) {
    this.gauges.add(name);
    this.series[name].set(this.step(timeMs), value);
  }

  /** The window's step starts, in seconds (uPlot's x values), oldest first, ending at `nowMs`. */
  xs(nowMs) {
    const last = this.step(nowMs);
    const count = Math.round(this.windowS / this.stepS);
    return Array.from({length: count}, (_, i) => (last - count + 1 + i) * this.stepS);
  }

  /**
   * The y values of `name` over xs: a counter's totals divided by `per` seconds (per: stepS gives a
   * rate per second), or a gauge's readings carried forward until the next one (null before the first).
   */
  values(name, xs, {per = 1, scale = 1} = {}) {
    const map = this.series[name];
    if (this.gauges.has(name)) {
      let last = null;
      const before = [...map.keys()].filter((k) => k * this.stepS < xs[0]).sort((a, b) => a - b);
      if (before.length) last = map.get(before[before.length - 1]);
      return xs.map((x) => {
        const key = x / this.stepS;
        if (map.has(key)) last = map.get(key);
        return last;
      });
    }
    return xs.map((x) => ((map.get(x / this.stepS) || 0) / per) * scale);
  }

  /** Sum of `name` over the last `seconds` before nowMs. */
  sumLast(name, seconds, nowMs) {
    const from = this.step(nowMs - seconds * 1000);
    let total = 0;
    for (const [key, value] of this.series[name]) if (key > from) total += value;
    return total;
  }

  /** Forget steps older than the window (and keep the last gauge reading before it). */
  prune(nowMs) {
    const first = this.step(nowMs) - Math.round(this.windowS / this.stepS);
    for (const [name, map] of Object.entries(this.series)) {
      const old = [...map.keys()].filter((k) => k < first).sort((a, b) => a - b);
      const keep = this.gauges.has(name) && old.length ? old.pop() : null;
      for (const key of old) map.delete(key);
      if (keep !== null) {
        const value = map.get(keep);
        map.delete(keep);
        map.set(first, map.has(first) ? map.get(first) : value);
      }
    }
  }
}

// Tick labels as a 24-hour clock (and the date under the first tick of a day other than today's).
function clockTimes(u, ticks) {
  const today = new Date().toDateString();
  const seconds = ticks.length > 1 && ticks[1] - ticks[0] < 60;  // ticks closer than a minute
  const format = {hour: '2-digit', minute: '2-digit', second: seconds ? '2-digit' : undefined};
  return ticks.map((t, i) => {
    const date = new Date(t * 1000);
    const time = date.toLocaleTimeString('en-GB', format);
    const newDay = i === 0 || new Date(ticks[i - 1] * 1000).toDateString() !== date.toDateString();
    return newDay && date.toDateString() !== today ? `${time}\n${date.toLocaleDateString('en-CA')}` : time;
  });
}

// Dots only where a series has too few values to draw a line (a gauge read once so far).
const sparse = (u, si) => u.data[si].filter((v) => v !== null && v !== undefined).length <= 3;

/**
 * A line chart of time series in `el`: series [{label, color, fill}], options {height, format(y),
 * window (seconds: the x axis always shows the last `window` seconds)}.
 * Returns {update(xs, ...ys), destroy()}; it follows the width of `el`.
 */
export function timeChart(el, series, {height = 150, format = (v) => v, window = null} = {}) {
  const xRange = window ? () => { const now = Date.now() / 1000; return [now - window, now]; } : undefined;
  const opts = {
    width: Math.max(200, el.clientWidth || 400),
    height,
    legend: {live: false},
    cursor: {drag: {x: false, y: false}, points: {size: 5}},
    scales: {x: {time: true, range: xRange}, y: {range: (u, min, max) => [0, Math.max(max || 0, 1e-9) * 1.15]}},
    axes: [
      {stroke: '#5f6b7a', grid: {stroke: '#eef1f5'}, ticks: {stroke: '#dfe4ea'}, values: clockTimes},
      {stroke: '#5f6b7a', grid: {stroke: '#eef1f5'}, ticks: {stroke: '#dfe4ea'}, size: 56,
        values: (u, ticks) => ticks.map((t) => format(t))},
    ],
    series: [{}, ...series.map((s) => ({
      label: s.label,
      stroke: s.color,
      width: 1.5,
      fill: s.fill ? `${s.color}22` : undefined,
      points: {show: sparse, size: 6},
      spanGaps: false,
      value: (u, v) => (v === null || v === undefined ? '–' : format(v)),
    }))],
  };
  const xs = [];
  const chart = new uPlot(opts, [xs, ...series.map(() => [])], el);
  const resize = new ResizeObserver(() => {
    const width = Math.max(200, el.clientWidth);
    if (width !== chart.width) chart.setSize({width, height});
  });
  resize.observe(el);
  return {
    update(x, ...ys) { chart.setData([x, ...ys]); },
    destroy() { resize.disconnect(); chart.destroy(); },
  };
}
