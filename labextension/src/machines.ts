/**
 * Long-lived machines and CI runners (issue 19) under the task list: name, kind, cloud,
 * status and cost so far, from GET /tpi/machines (tpi_jupyter/machines/handlers.py).
 * Managed with `%tpi machine ...` / `tpi runner ...`; the sidebar only shows them.
 */
import { el } from './format';

export interface IMachineRow {
  id: string;
  name: string;
  kind: string;
  cloud: string;
  machine: string;
  status: string;
  cost: string;
}

export type MachineFetch = () => Promise<{ machines: IMachineRow[] }>;

export class MachineSection {
  readonly node: HTMLElement;
  private readonly list: HTMLUListElement;
  private print = '';

  constructor(private readonly fetch: MachineFetch) {
    this.node = el('section', 'tpi-sidebar-machines');
    this.node.setAttribute('aria-label', 'Machines and runners');
    this.node.hidden = true;
    this.list = el('ul', 'tpi-sidebar-machine-list');
    this.node.append(el('h3', 'tpi-sidebar-machines-heading', 'Machines and runners'), this.list);
  }

  /** Fetch and redraw; a server without the endpoint (older) leaves the section hidden. */
  async refresh(): Promise<boolean> {
    let rows: IMachineRow[];
    try {
      rows = (await this.fetch()).machines;
    } catch {
      return false;
    }
    const print = rows.map(r => `${r.id}\t${r.status}\t${r.cost}`).join('\n');
    if (print === this.print) {
      return false;
    }
    this.print = print;
    this.list.replaceChildren(
      ...rows.map(row => {
        const item = el('li', 'tpi-sidebar-machine');
        item.dataset.id = row.id;
        item.title = `${row.kind} ${row.id} on ${row.cloud} (${row.machine})`;
        item.append(
          el('span', 'tpi-sidebar-machine-name', row.name),
          el('span', 'tpi-sidebar-machine-kind', row.kind),
          el('span', `tpi-sidebar-badge tpi-status-${row.status}`, row.status),
          el('span', 'tpi-sidebar-machine-cost', row.cost)
        );
        return item;
      })
    );
    this.node.hidden = rows.length === 0;
    return true;
  }
}
