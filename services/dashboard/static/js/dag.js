/* A workflow run's steps drawn as a directed graph in SVG, laid out by topological depth: a step's
   column is the length of the longest chain of dependencies before it, and within a column steps
   are ordered by where their dependencies sit (fewer crossing edges). Each node carries its step's
   status (data-status, and a colour from the stylesheet: completed steps are green). */

import {s} from './dom.js';

const NODE_W = 176;
const NODE_H = 48;
const GAP_X = 64;
const GAP_Y = 22;
const PAD = 16;
const MAX_NAME = 22;  // characters that fit a node, in its bold and its small type
const MAX_STATUS = 28;

/** Columns of step names by depth, and each step's depth. Unknown dependencies are ignored. */
export function layers(steps) {
  const byName = new Map(steps.map((step) => [step.name, step]));
  const depth = new Map();
  const visiting = new Set();
  const visit = (name) => {
    if (depth.has(name)) return depth.get(name);
    if (visiting.has(name)) return 0;  // a cycle cannot pass validation; never loop on one anyway
    visiting.add(name);
    const deps = (byName.get(name).depends_on || []).filter((dep) => byName.has(dep));
    const d = deps.length ? Math.max(...deps.map(visit)) + 1 : 0;
    visiting.delete(name);
    depth.set(name, d);
    return d;
  };
  steps.forEach((step) => visit(step.name));
  const columns = [];
  for (const step of steps) {
    const d = depth.get(step.name);
    (columns[d] ||= []).push(step.name);
  }
  // Order each column by the mean row of its dependencies in the columns before it.
  const row = new Map();
  columns.forEach((column, c) => {
    if (c > 0) {
      const order = new Map(column.map((name, i) => [name, i]));
      const weight = (name) => {
        const rows = (byName.get(name).depends_on || []).filter((dep) => row.has(dep)).map((dep) => row.get(dep));
        return rows.length ? rows.reduce((a, b) => a + b, 0) / rows.length : order.get(name);
      };
      column.sort((a, b) => weight(a) - weight(b) || order.get(a) - order.get(b));
    }
    column.forEach((name, i) => row.set(name, i));
  });
  return {columns, depth};
}

/** Node positions (top-left) and the drawing's size. */
export function layout(steps) {
  const {columns} = layers(steps);
  const tallest = Math.max(1, ...columns.map((column) => column.length));
  const height = PAD * 2 + tallest * NODE_H + (tallest - 1) * GAP_Y;
  const width = PAD * 2 + columns.length * NODE_W + Math.max(0, columns.length - 1) * GAP_X;
  const at = new Map();
  columns.forEach((column, c) => {
    const used = column.length * NODE_H + (column.length - 1) * GAP_Y;
    const top = (height - used) / 2;
    column.forEach((name, i) => at.set(name, {x: PAD + c * (NODE_W + GAP_X), y: top + i * (NODE_H + GAP_Y)}));
  });
  return {at, width: Math.max(width, NODE_W + PAD * 2), height};
}

function label(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/**
 * The graph as an <svg>. Options: selected (a step name), onSelect(step), note(step) -> a short text
 * shown under the status (an agent, a progress message).
 */
export function renderDag(steps, {selected = null, onSelect = null, note = () => ''} = {}) {
  const {at, width, height} = layout(steps);
  const svg = s('svg', {class: 'dag', id: 'dag', viewBox: `0 0 ${width} ${height}`, width, height, role: 'img',
    'aria-label': `Workflow graph of ${steps.length} steps`});
  svg.append(s('defs', {}, s('marker', {id: 'dag-arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7,
    markerHeight: 7, orient: 'auto-start-reverse'}, s('path', {d: 'M0,0 L10,5 L0,10 z', class: 'dag-arrowhead'}))));
  const byName = new Map(steps.map((step) => [step.name, step]));
  for (const step of steps) {
    for (const dep of step.depends_on || []) {
      const from = at.get(dep);
      const to = at.get(step.name);
      if (!from || !to) continue;
      const x1 = from.x + NODE_W;
      const y1 = from.y + NODE_H / 2;
      const x2 = to.x - 2;
      const y2 = to.y + NODE_H / 2;
      const mid = (x1 + x2) / 2;
      svg.append(s('path', {d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`,
        class: `dag-edge st-${byName.get(dep).status}`, 'marker-end': 'url(#dag-arrow)',
        dataset: {from: dep, to: step.name}}));
    }
  }
  for (const step of steps) {
    const {x, y} = at.get(step.name);
    const extra = note(step);
    const node = s('g', {class: ['dag-node', `st-${step.status}`, step.name === selected ? 'selected' : null],
      transform: `translate(${x},${y})`, tabindex: 0, role: 'button',
      dataset: {step: step.name, status: step.status, kind: step.kind}},
    s('title', {}, `${step.name}: ${step.status}${step.error ? ` (${step.error})` : ''}`),
    s('rect', {width: NODE_W, height: NODE_H, rx: 8, class: 'dag-box'}),
    s('text', {x: 12, y: 19, class: 'dag-name'}, label(step.name, step.kind === 'signal' ? MAX_NAME - 6 : MAX_NAME)),
    step.kind === 'signal'
      ? s('text', {x: NODE_W - 10, y: 17, 'text-anchor': 'end', class: 'dag-kind'}, 'signal') : null,
    s('text', {x: 12, y: 37, class: 'dag-status'},
      label(`${step.status.replace(/_/g, ' ')}${extra ? ` · ${extra}` : ''}`, MAX_STATUS)));
    if (onSelect) {
      node.addEventListener('click', () => onSelect(step));
      node.addEventListener('keydown', (event) => { if (event.key === 'Enter') onSelect(step); });
    }
    svg.append(node);
  }
  return svg;
}
