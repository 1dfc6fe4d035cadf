/**
 * The sidebar's "Map runs" section: every map run (issue 15) with the counts its notebook
 * widget shows, from GET /tpi/maps. Polled with the task list; a server without the route
 * (an older tpi-jupyter) just hides the section.
 */
import { el, formatDuration } from './format';

export interface IMapError {
  task: string | null;
  kind: string;
  error: string;
}

export interface IMapRun {
  id: string;
  name: string;
  cloud?: string;
  status: string;
  total?: number;
  done?: number;
  failed?: number;
  retrying?: number;
  in_flight?: number;
  rate?: number;
  eta?: number | null;
  errors?: IMapError[];
  error?: string;
}

const PARTS: [keyof IMapRun, string][] = [
  ['done', 'done'],
  ['failed', 'failed'],
  ['retrying', 'retrying'],
  ['in_flight', 'in flight']
];

/** "120/500 · 3 failed · 2 retrying · 4 in flight · 35.1/s · ETA 11s" */
export function mapCounts(run: IMapRun): string {
  const total = run.total ?? 0;
  const finished = (run.done ?? 0) + (run.failed ?? 0);
  const parts = [`${finished}/${total} finished`];
  for (const [key, label] of PARTS.slice(1)) {
    const value = Number(run[key] ?? 0);
    if (value) {
      parts.push(`${value} ${label}`);
    }
  }
  parts.push(`${(run.rate ?? 0).toFixed(1)}/s`);
  if (typeof run.eta === 'number') {
    parts.push(`ETA ${formatDuration(run.eta)}`);
  }
  return parts.join(' · ');
}

export class MapsSection {
  readonly node: HTMLElement;
  private readonly list: HTMLUListElement;
  private print = '';

  constructor() {
    this.node = el('section', 'tpi-sidebar-maps');
    this.node.setAttribute('aria-label', 'Map runs');
    this.list = el('ul', 'tpi-sidebar-map-list');
    this.node.append(el('h4', 'tpi-sidebar-section-title', 'Map runs'), this.list);
    this.node.hidden = true;
  }

  /** Show these runs; true when anything shown changed. */
  render(runs: IMapRun[]): boolean {
    const print = JSON.stringify(runs);
    if (print === this.print) {
      return false;
    }
    this.print = print;
    this.list.replaceChildren(...runs.map(run => this.item(run)));
    this.node.hidden = runs.length === 0;
    return true;
  }

  private item(run: IMapRun): HTMLLIElement {
    const item = el('li', 'tpi-sidebar-map');
    item.dataset.id = run.id;
    item.dataset.status = run.status;
    const top = el('div', 'tpi-sidebar-item-top');
    top.append(
      el('span', 'tpi-sidebar-name', run.name),
      el('span', 'tpi-sidebar-badge', run.status)
    );
    const bar = el('div', 'tpi-sidebar-map-bar');
    const total = Math.max(run.total ?? 0, 1);
    for (const [key, label] of PARTS) {
      const value = Number(run[key] ?? 0);
      if (value) {
        const part = el('span', `tpi-sidebar-map-${String(key).replace('_', '-')}`);
        part.style.width = `${(100 * value) / total}%`;
        part.title = `${label}: ${value}`;
        bar.appendChild(part);
      }
    }
    const counts = el('div', 'tpi-sidebar-map-counts', run.error ?? mapCounts(run));
    item.append(top, bar, counts);
    const latest = run.errors?.[run.errors.length - 1];
    if (latest) {
      item.appendChild(
        el('div', 'tpi-sidebar-map-error', `${latest.task ?? ''} ${latest.kind}: ${latest.error}`)
      );
    }
    item.setAttribute('aria-label', `${run.name}, ${run.status}, ${counts.textContent}`);
    return item;
  }
}
