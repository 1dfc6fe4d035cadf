/**
 * The left sidebar: a toolbar (refresh, status filter), the task list, and the
 * selected task's details (actions, ranks, result files, live log, events).
 *
 * Plain DOM in a Lumino widget, updated in place so that keyboard focus
 * survives polls. Colours come from JupyterLab's --jp-* CSS variables only.
 */
import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { refreshIcon } from '@jupyterlab/ui-components';
import type { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import {
  Action,
  ApiError,
  FINAL,
  IFile,
  IFiles,
  ILogLine,
  ITaskDetail,
  ITaskSummary,
  STATUSES,
  TpiClient
} from './api';
import { clipLine, el, formatDuration, formatSize, formatSpot, formatTime } from './format';
import { MachineSection } from './machines';
import { MapsSection } from './maps';
import { SidebarPoll } from './polling';

/** What the panel needs from JupyterLab's command registry. */
export interface ICommands {
  execute(id: string, args?: Record<string, unknown>): Promise<unknown>;
}

export interface ITaskPanelOptions {
  client: TpiClient;
  commands: ICommands;
}

const MAX_LOG_LINES = 2000;
/** Longest poll interval while nothing changes and no task is active. */
const IDLE_MAX_INTERVAL = 30_000;
/** Longest poll interval while some task is still queued, provisioning or running. */
const ACTIVE_MAX_INTERVAL = 10_000;
const ACTION_LABELS: Record<Action, [string, string]> = {
  stop: ['Stop', 'Stopping…'],
  pull: ['Pull', 'Pulling…'],
  destroy: ['Destroy', 'Destroying…']
};

export class TaskPanel extends Widget {
  readonly poller: SidebarPoll;
  private readonly client: TpiClient;
  private readonly commands: ICommands;

  // state
  private tasks: ITaskSummary[] = [];
  private readonly maps = new MapsSection(); // map runs with their counts (maps.ts)
  private fetchedAt = 0; // Date.now() when `tasks` came
  private listPrint = '';
  private selectedId: string | null = null;
  private detail: ITaskDetail | null = null;
  private detailPrint = '';
  private files: IFiles | null = null;
  private filesPrint = '';
  private filesStatus = '';
  private logCursor = '';
  private logFinal = false;
  private logCount = 0;
  private busy: Action | 'open' | null = null;
  private logAtBottom = true; // follow new lines unless the user scrolled up
  private filter = '';
  private ticker: ReturnType<typeof setInterval> | null = null;
  private readonly machines: MachineSection;

  // DOM
  private readonly refreshButton: HTMLButtonElement;
  private readonly filterSelect: HTMLSelectElement;
  private readonly message: HTMLElement;
  private readonly list: HTMLUListElement;
  private readonly empty: HTMLElement;
  private readonly items = new Map<string, HTMLLIElement>();
  private readonly detailNode: HTMLElement;
  private readonly detailTitle: HTMLElement;
  private readonly detailBadge: HTMLElement;
  private readonly detailMeta: HTMLElement;
  private readonly actionButtons: Record<Action, HTMLButtonElement>;
  private readonly ranksBody: HTMLTableSectionElement;
  private readonly filesList: HTMLUListElement;
  private readonly filesNote: HTMLElement;
  private readonly log: HTMLPreElement;
  private readonly eventsList: HTMLOListElement;

  constructor(options: ITaskPanelOptions) {
    super();
    this.client = options.client;
    this.commands = options.commands;
    this.id = 'tpi-jupyter-sidebar';
    this.addClass('tpi-sidebar');
    this.title.caption = 'TPI tasks';
    this.node.setAttribute('role', 'region');
    this.node.setAttribute('aria-label', 'TPI tasks');

    // toolbar
    const header = el('div', 'tpi-sidebar-header');
    header.appendChild(el('h2', 'tpi-sidebar-heading', 'TPI tasks'));
    const toolbar = el('div', 'tpi-sidebar-toolbar');
    toolbar.setAttribute('role', 'toolbar');
    toolbar.setAttribute('aria-label', 'Task list');
    this.filterSelect = el('select', 'tpi-sidebar-filter jp-mod-styled');
    this.filterSelect.setAttribute('aria-label', 'Filter by status');
    this.filterSelect.title = 'Show only tasks with this status';
    for (const [value, label] of [
      ['', 'All statuses'],
      ['active', 'Active'],
      ...STATUSES.map(s => [s, s])
    ]) {
      const option = el('option', '', label);
      option.value = value;
      this.filterSelect.appendChild(option);
    }
    this.filterSelect.addEventListener('change', () => {
      this.filter = this.filterSelect.value;
      this.renderList();
    });
    this.refreshButton = el('button', 'tpi-sidebar-refresh jp-Button');
    this.refreshButton.type = 'button';
    this.refreshButton.title = 'Refresh';
    this.refreshButton.setAttribute('aria-label', 'Refresh');
    refreshIcon.element({ container: this.refreshButton, tag: 'span', elementPosition: 'center' });
    this.refreshButton.addEventListener('click', () => void this.poller.now());
    toolbar.append(this.filterSelect, this.refreshButton);
    header.appendChild(toolbar);

    this.message = el('div', 'tpi-sidebar-message');
    this.message.setAttribute('role', 'alert');
    this.message.hidden = true;

    // task list: a listbox with a roving tabindex (Tab enters it, arrows move, Enter selects)
    const listSection = el('div', 'tpi-sidebar-listbox');
    this.list = el('ul', 'tpi-sidebar-list');
    this.list.setAttribute('role', 'listbox');
    this.list.setAttribute('aria-label', 'Tasks');
    this.list.addEventListener('keydown', event => this.onListKey(event));
    this.empty = el('p', 'tpi-sidebar-empty', 'No tasks yet: run a %%tpi cell to launch one.');
    listSection.append(this.list, this.empty);

    // details of the selected task
    this.detailNode = el('section', 'tpi-sidebar-detail');
    this.detailNode.setAttribute('aria-label', 'Selected task');
    this.detailNode.hidden = true;
    const titleRow = el('div', 'tpi-sidebar-detail-title');
    this.detailTitle = el('h3', 'tpi-sidebar-detail-name');
    this.detailBadge = el('span', 'tpi-sidebar-badge');
    titleRow.append(this.detailTitle, this.detailBadge);
    this.detailMeta = el('dl', 'tpi-sidebar-meta');
    const actions = el('div', 'tpi-sidebar-actions');
    actions.setAttribute('role', 'group');
    actions.setAttribute('aria-label', 'Task actions');
    const button = (action: Action, extra: string, title: string): HTMLButtonElement => {
      const b = el('button', `jp-Button tpi-sidebar-action ${extra}`, ACTION_LABELS[action][0]);
      b.type = 'button';
      b.title = title;
      b.dataset.action = action;
      b.addEventListener('click', () => void this.onAction(action));
      actions.appendChild(b);
      return b;
    };
    this.actionButtons = {
      stop: button(
        'stop',
        'jp-mod-styled',
        'Stop the machines (the task can be inspected and pulled)'
      ),
      pull: button('pull', 'jp-mod-styled', 'Download the output into the workdir'),
      destroy: button(
        'destroy',
        'jp-mod-styled tpi-mod-danger',
        'Stop, download the output, and delete every resource of this task'
      )
    };

    const section = (title: string, ...children: HTMLElement[]): HTMLElement => {
      const s = el('div', 'tpi-sidebar-section');
      s.append(el('h4', 'tpi-sidebar-section-title', title), ...children);
      return s;
    };
    const ranksTable = el('table', 'tpi-sidebar-ranks');
    const head = ranksTable.createTHead().insertRow();
    for (const name of ['rank', 'state', 'boots', 'code']) {
      const th = el('th', '', name);
      th.scope = 'col';
      head.appendChild(th);
    }
    this.ranksBody = ranksTable.createTBody();
    this.filesList = el('ul', 'tpi-sidebar-files');
    this.filesList.setAttribute('aria-label', 'Result files');
    this.filesNote = el('p', 'tpi-sidebar-note');
    this.log = el('pre', 'tpi-sidebar-log');
    this.log.tabIndex = 0; // scrollable with the keyboard
    this.log.setAttribute('aria-label', 'Log');
    this.log.addEventListener('scroll', () => {
      this.logAtBottom = this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 8;
    });
    this.eventsList = el('ol', 'tpi-sidebar-events');

    this.detailNode.append(
      titleRow,
      this.detailMeta,
      actions,
      section('Result files', this.filesNote, this.filesList),
      section('Log', this.log),
      section('Ranks', ranksTable),
      section('Events', this.eventsList)
    );

    this.machines = new MachineSection(() => this.client.machines());
    this.node.append(
      header,
      this.message,
      listSection,
      this.maps.node,
      this.machines.node,
      this.detailNode
    );

    this.poller = new SidebarPoll({
      poll: () => this.poll(),
      active: () => this.isVisible && !this.isDisposed,
      maxInterval: () =>
        this.tasks.some(t => !FINAL.has(t.status)) ? ACTIVE_MAX_INTERVAL : IDLE_MAX_INTERVAL,
      floor: () => this.pollFloor(),
      onFailure: error => this.reportFailure(error),
      onRecovery: () => this.showProblem('')
    });
    this.renderList();
  }

  /** The selected task's id, or null. */
  get selected(): string | null {
    return this.selectedId;
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.poller.dispose();
    this.stopTicker();
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this.poller.start();
    this.startTicker();
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    if (this.isVisible) {
      this.poller.start();
      this.startTicker();
    }
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this.poller.stop();
    this.stopTicker();
  }

  protected onBeforeDetach(msg: Message): void {
    this.poller.stop();
    this.stopTicker();
    super.onBeforeDetach(msg);
  }

  /** Select a task (or none), show its details and poll it now. */
  select(id: string | null): void {
    if (id !== this.selectedId) {
      this.selectedId = id;
      this.detail = null;
      this.detailPrint = '';
      this.files = null;
      this.filesPrint = '';
      this.filesStatus = '';
      this.logCursor = '';
      this.logFinal = false;
      this.logCount = 0;
      this.log.textContent = '';
      this.logAtBottom = true;
      this.ranksBody.textContent = '';
      this.eventsList.textContent = '';
      this.filesList.textContent = '';
      this.filesNote.textContent = '';
    }
    this.renderList();
    this.renderDetail();
    void this.poller.now();
  }

  // -- polling

  /**
   * The least ms between polls that every task allows: each poll reads every listed task
   * (and the selected one's detail), and a backend declares its minimum (`poll_interval`, s).
   */
  private pollFloor(): number {
    const seconds = [...this.tasks, ...(this.detail ? [this.detail] : [])]
      .map(t => t.poll_interval)
      .filter((value): value is number => typeof value === 'number' && Number.isFinite(value));
    return 1000 * Math.max(0, ...seconds);
  }

  /** One poll: the list, then the selected task's detail, new log lines and files. */
  private async poll(): Promise<boolean> {
    const { tasks } = await this.client.tasks();
    tasks.sort((a, b) => b.created - a.created || a.name.localeCompare(b.name));
    this.tasks = tasks;
    this.fetchedAt = Date.now();
    const listPrint = tasks.map(t => `${t.id}\t${t.name}\t${t.status}\t${t.machine}`).join('\n');
    let changed = listPrint !== this.listPrint;
    this.listPrint = listPrint;
    if (this.selectedId && !tasks.some(t => t.id === this.selectedId)) {
      this.select(null); // destroyed, here or elsewhere
      changed = true;
    }
    this.renderList();
    // Every map run is a task: none left means no map run to ask for (the last one destroyed).
    changed = (tasks.length ? await this.pollMaps() : this.maps.render([])) || changed;
    changed = (await this.machines.refresh()) || changed;
    if (this.selectedId) {
      changed = (await this.pollSelected(this.selectedId)) || changed;
    }
    return changed;
  }

  /** The map runs section; a server without GET /tpi/maps hides it. */
  private async pollMaps(): Promise<boolean> {
    try {
      return this.maps.render((await this.client.maps()).maps);
    } catch {
      return this.maps.render([]);
    }
  }

  private async pollSelected(id: string): Promise<boolean> {
    let changed = false;
    let detail: ITaskDetail;
    try {
      detail = await this.client.task(id);
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        this.select(null);
        return true;
      }
      throw error;
    }
    if (id !== this.selectedId) {
      return true; // the user picked another task meanwhile
    }
    const print = JSON.stringify([detail.status, detail.ranks, detail.events]);
    changed = print !== this.detailPrint;
    this.detailPrint = print;
    this.detail = detail;

    if (!this.logFinal) {
      const logs = await this.client.logs(id, this.logCursor);
      if (id !== this.selectedId) {
        return true;
      }
      this.logCursor = logs.cursor;
      this.logFinal = logs.final;
      if (logs.lines.length) {
        this.appendLog(logs.lines, detail.parallelism > 1);
        changed = true;
      }
    }
    if (this.files === null || this.filesStatus !== detail.status) {
      await this.loadFiles(id, detail.status);
    }
    this.renderDetail();
    return changed;
  }

  private async loadFiles(id: string, status: string): Promise<void> {
    const files = await this.client.files(id);
    if (id !== this.selectedId) {
      return;
    }
    this.files = files;
    this.filesStatus = status;
    const print = JSON.stringify(files);
    if (print !== this.filesPrint) {
      this.filesPrint = print;
      this.renderFiles();
    }
  }

  private reportFailure(error: unknown): void {
    let text: string;
    if (error instanceof ApiError && error.status === 404) {
      text =
        'The tpi-jupyter server extension is not running (GET /tpi/tasks: 404). ' +
        'Enable it with `jupyter server extension enable tpi_jupyter.server` and restart the server.';
    } else {
      text = `Cannot load TPI tasks: ${error instanceof Error ? error.message : String(error)}`;
    }
    console.warn(`tpi-jupyter: ${text}`);
    this.showProblem(text);
    Notification.warning(text, { autoClose: false });
  }

  private showProblem(text: string): void {
    this.message.textContent = text;
    this.message.hidden = !text;
  }

  // -- elapsed ticker (client-side seconds between polls of active tasks)

  private startTicker(): void {
    if (this.ticker === null) {
      this.ticker = setInterval(() => this.updateElapsed(), 1000);
    }
  }

  private stopTicker(): void {
    if (this.ticker !== null) {
      clearInterval(this.ticker);
      this.ticker = null;
    }
  }

  private elapsed(task: ITaskSummary): number {
    const extra = FINAL.has(task.status) ? 0 : (Date.now() - this.fetchedAt) / 1000;
    return task.elapsed + Math.max(0, extra);
  }

  private updateElapsed(): void {
    for (const task of this.tasks) {
      const item = this.items.get(task.id);
      const node = item?.querySelector('.tpi-sidebar-elapsed');
      if (node && !FINAL.has(task.status)) {
        node.textContent = formatDuration(this.elapsed(task));
      }
    }
  }

  // -- list

  private visibleTasks(): ITaskSummary[] {
    if (!this.filter) {
      return this.tasks;
    }
    if (this.filter === 'active') {
      return this.tasks.filter(t => !FINAL.has(t.status));
    }
    return this.tasks.filter(t => t.status === this.filter);
  }

  private renderList(): void {
    const shown = this.visibleTasks();
    const ids = new Set(shown.map(t => t.id));
    for (const [id, item] of this.items) {
      if (!ids.has(id)) {
        item.remove();
        this.items.delete(id);
      }
    }
    const active = document.activeElement;
    const focusedId =
      active instanceof HTMLLIElement && active.parentElement === this.list
        ? active.dataset.id
        : undefined;
    const focusable =
      shown.find(t => t.id === focusedId)?.id ??
      shown.find(t => t.id === this.selectedId)?.id ??
      shown.find(t => this.items.get(t.id)?.tabIndex === 0)?.id ??
      shown[0]?.id;
    shown.forEach((task, index) => {
      let item = this.items.get(task.id);
      if (!item) {
        item = this.createItem(task.id);
        this.items.set(task.id, item);
      }
      this.updateItem(item, task);
      item.tabIndex = task.id === focusable ? 0 : -1;
      if (this.list.children[index] !== item) {
        this.list.insertBefore(item, this.list.children[index] ?? null);
      }
    });
    this.empty.hidden = shown.length > 0;
    this.empty.textContent = this.tasks.length
      ? 'No task with this status.'
      : 'No tasks yet: run a %%tpi cell to launch one.';
    this.list.hidden = shown.length === 0;
  }

  private createItem(id: string): HTMLLIElement {
    const item = el('li', 'tpi-sidebar-item');
    item.setAttribute('role', 'option');
    item.dataset.id = id;
    const top = el('div', 'tpi-sidebar-item-top');
    top.append(el('span', 'tpi-sidebar-name'), el('span', 'tpi-sidebar-badge'));
    const bottom = el('div', 'tpi-sidebar-item-bottom');
    bottom.append(el('span', 'tpi-sidebar-where'), el('span', 'tpi-sidebar-elapsed'));
    item.append(top, bottom);
    item.addEventListener('click', () => {
      item.focus();
      this.select(id);
    });
    return item;
  }

  private updateItem(item: HTMLLIElement, task: ITaskSummary): void {
    const selected = task.id === this.selectedId;
    item.classList.toggle('jp-mod-selected', selected);
    item.setAttribute('aria-selected', String(selected));
    item.dataset.status = task.status;
    const where = [task.cloud, task.machine].filter(Boolean).join(' · ');
    const times = task.parallelism > 1 ? ` ×${task.parallelism}` : '';
    setText(item.querySelector('.tpi-sidebar-name'), task.name);
    setText(item.querySelector('.tpi-sidebar-where'), `${where}${times}`);
    setText(item.querySelector('.tpi-sidebar-elapsed'), formatDuration(this.elapsed(task)));
    setBadge(item.querySelector('.tpi-sidebar-badge'), task.status);
    item.title = task.error
      ? `${task.name} (${task.id}): ${task.error}`
      : `${task.name} (${task.id}), ${task.status}`;
    item.setAttribute(
      'aria-label',
      `${task.name}, ${task.status}, ${where}${times}, ${formatDuration(this.elapsed(task))}`
    );
  }

  private onListKey(event: KeyboardEvent): void {
    const items = Array.from(this.list.children) as HTMLLIElement[];
    const current = items.indexOf(document.activeElement as HTMLLIElement);
    let next = -1;
    switch (event.key) {
      case 'ArrowDown':
        next = Math.min(items.length - 1, current + 1);
        break;
      case 'ArrowUp':
        next = Math.max(0, current - 1);
        break;
      case 'Home':
        next = 0;
        break;
      case 'End':
        next = items.length - 1;
        break;
      case 'Enter':
      case ' ':
        if (current >= 0) {
          event.preventDefault();
          this.select(items[current].dataset.id ?? null);
        }
        return;
      case 'Escape':
        if (this.selectedId) {
          event.preventDefault();
          this.select(null);
        }
        return;
      default:
        return;
    }
    event.preventDefault();
    if (next >= 0 && items[next]) {
      for (const item of items) {
        item.tabIndex = item === items[next] ? 0 : -1;
      }
      items[next].focus();
    }
  }

  // -- details

  private renderDetail(): void {
    const summary = this.tasks.find(t => t.id === this.selectedId);
    const detail = this.detail && this.detail.id === this.selectedId ? this.detail : null;
    const task: ITaskSummary | null = detail ?? summary ?? null;
    this.detailNode.hidden = !task;
    this.node.classList.toggle('tpi-mod-has-detail', !!task);
    if (!task) {
      return;
    }
    this.detailTitle.textContent = task.name;
    setBadge(this.detailBadge, task.status);
    const meta: [string, string][] = [
      ['id', task.id],
      ['machine', [task.cloud, task.machine].filter(Boolean).join(' · ')],
      ['ranks', String(task.parallelism)],
      ['pricing', formatSpot(task.spot)],
      ['cost', task.cost ?? ''],
      [
        'started',
        task.created ? `${formatTime(task.created)}, ${formatDuration(this.elapsed(task))}` : ''
      ],
      ['workdir', task.workdir ?? ''],
      ['output', task.output ?? '']
    ];
    this.detailMeta.textContent = '';
    for (const [key, value] of meta) {
      if (value) {
        this.detailMeta.append(el('dt', '', key), el('dd', '', value));
      }
    }
    const final = FINAL.has(task.status);
    const destroyed = task.status === 'destroyed';
    this.setAction('stop', !final);
    this.setAction('pull', !!task.output && !destroyed);
    this.setAction('destroy', !destroyed);

    if (detail) {
      this.renderRanks(detail);
      this.renderEvents(detail);
    }
    if (!this.files) {
      this.filesNote.textContent = 'Loading…';
    }
    this.log.dataset.empty = this.logFinal ? 'No output.' : 'Waiting for output…';
    this.followLog();
  }

  private setAction(action: Action, enabled: boolean): void {
    const b = this.actionButtons[action];
    b.disabled = !enabled || this.busy !== null;
    b.textContent = ACTION_LABELS[action][this.busy === action ? 1 : 0];
  }

  private renderRanks(detail: ITaskDetail): void {
    this.ranksBody.textContent = '';
    for (const rank of detail.ranks) {
      const row = this.ranksBody.insertRow();
      row.append(
        el('td', '', String(rank.rank)),
        el('td', '', ''),
        el('td', '', String(rank.boots)),
        el('td', '', rank.code === null ? '' : String(rank.code))
      );
      const badge = el('span', 'tpi-sidebar-badge');
      setBadge(badge, rank.state);
      row.cells[1].appendChild(badge);
      if (rank.reason) {
        // the reason can be long: a row of its own under its rank
        const why = this.ranksBody.insertRow();
        why.className = 'tpi-sidebar-reason-row';
        const cell = el('td', 'tpi-sidebar-reason', rank.reason);
        cell.colSpan = 4;
        why.appendChild(cell);
      }
    }
  }

  private renderEvents(detail: ITaskDetail): void {
    this.eventsList.textContent = '';
    for (const event of detail.events.slice(-50).reverse()) {
      const item = el('li', 'tpi-sidebar-event');
      item.append(
        el('time', 'tpi-sidebar-event-time', formatTime(event.time)),
        el('span', 'tpi-sidebar-event-kind', event.kind),
        el('span', 'tpi-sidebar-event-rank', event.rank === null ? '' : `rank ${event.rank}`),
        el('span', 'tpi-sidebar-event-detail', event.detail)
      );
      this.eventsList.appendChild(item);
    }
  }

  private renderFiles(): void {
    const files = this.files;
    this.filesList.textContent = '';
    if (!files) {
      return;
    }
    const where =
      files.source === 'remote'
        ? 'In the task’s storage: opening one pulls the output first.'
        : files.source === 'workdir'
          ? 'Pulled into the workdir.'
          : 'This task has no output (set output=DIR).';
    // JupyterLab saves checkpoints next to a file it opened: not results of the task
    const shown = files.files.filter(f => !f.path.split('/').includes('.ipynb_checkpoints'));
    for (const file of shown) {
      const item = el('li', 'tpi-sidebar-file');
      const b = el('button', 'tpi-sidebar-file-button');
      b.type = 'button';
      b.dataset.path = file.path;
      b.append(
        el('span', 'tpi-sidebar-file-path', file.path),
        el('span', 'tpi-sidebar-file-size', formatSize(file.size))
      );
      if (file.open_path === null) {
        b.disabled = true;
        b.title = `${file.path}: outside the server's root directory, so JupyterLab cannot open it`;
      } else {
        b.title = file.local
          ? `Open ${file.open_path}`
          : `Pull the output, then open ${file.open_path}`;
        b.setAttribute('aria-label', `${file.local ? 'Open' : 'Pull and open'} ${file.path}`);
      }
      b.addEventListener('click', () => void this.openFile(file));
      item.appendChild(b);
      this.filesList.appendChild(item);
    }
    this.filesNote.textContent = shown.length || files.source === 'none' ? where : 'No files yet.';
  }

  private appendLog(lines: ILogLine[], showRank: boolean): void {
    const text = lines
      .map(line => clipLine(showRank ? `[${line.rank}] ${line.text}` : line.text))
      .join('\n');
    this.log.appendChild(document.createTextNode((this.logCount ? '\n' : '') + text));
    this.logCount += lines.length;
    while (this.logCount > MAX_LOG_LINES && this.log.firstChild) {
      // drop whole chunks from the top until the newest MAX_LOG_LINES or so are left
      const first = this.log.firstChild;
      this.logCount -= (first.textContent ?? '').split('\n').filter(Boolean).length;
      first.remove();
    }
    this.followLog();
  }

  /** Keep the newest line in view (after new lines, and on each render: fonts and themes change). */
  private followLog(): void {
    if (this.logAtBottom) {
      this.log.scrollTop = this.log.scrollHeight;
    }
  }

  // -- actions

  private async onAction(action: Action): Promise<void> {
    const id = this.selectedId;
    const task = this.detail ?? this.tasks.find(t => t.id === id);
    if (!id || !task || this.busy) {
      return;
    }
    if (action === 'destroy') {
      const result = await showDialog({
        title: `Destroy task ${task.name}?`,
        body:
          'This stops its machines, downloads its output into the workdir, and deletes ' +
          'every resource and the task itself. It cannot be undone.',
        buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Destroy' })],
        defaultButton: 0
      });
      if (!result.button.accept) {
        return;
      }
    }
    await this.run(action, async () => {
      const reply = await this.client.act(id, action);
      if (action === 'destroy') {
        this.select(null);
      } else if (action === 'pull' && this.selectedId === id) {
        await this.loadFiles(id, reply.status);
      }
      return reply;
    });
  }

  private async openFile(file: IFile): Promise<void> {
    const id = this.selectedId;
    if (!id || this.busy) {
      return;
    }
    let target = file;
    if (!file.local) {
      const ok = await this.run('pull', async () => {
        await this.client.act(id, 'pull');
        await this.loadFiles(id, this.filesStatus);
      });
      const pulled = this.files?.files.find(f => f.path === file.path);
      if (!ok || !pulled) {
        return;
      }
      target = pulled;
    }
    if (target.open_path) {
      await this.commands.execute('docmanager:open', { path: target.open_path });
    }
  }

  /** Run a user action: buttons disabled meanwhile, errors shown, then poll at once. */
  private async run(action: Action, work: () => Promise<unknown>): Promise<boolean> {
    this.busy = action;
    this.renderDetail();
    let ok = true;
    try {
      await work();
    } catch (error) {
      ok = false;
      const reason = error instanceof Error ? error.message : String(error);
      Notification.error(`TPI ${action} failed: ${reason}`, { autoClose: 8000 });
    } finally {
      this.busy = null;
      this.renderDetail();
    }
    await this.poller.now();
    return ok;
  }
}

function setText(node: Element | null, text: string): void {
  if (node && node.textContent !== text) {
    node.textContent = text;
  }
}

function setBadge(node: Element | null, status: string): void {
  if (!node) {
    return;
  }
  setText(node, status);
  node.setAttribute('data-status', status);
}
