/**
 * The sidebar's polling schedule on @lumino/polling's Poll: fast while things
 * change, backing off while nothing does, paused while the panel (or the
 * browser tab) is hidden, never faster than the tasks' clouds allow, and
 * reporting a persistent failure once rather than on every poll.
 */
import { Poll } from '@lumino/polling';

export interface ISidebarPollOptions {
  /** One poll; resolves to whether anything changed. Never runs twice at once. */
  poll: () => Promise<boolean>;
  /** Whether polling may run now (the panel is visible); otherwise it stands by. */
  active: () => boolean;
  /** The longest interval while idle, in ms: may depend on the state (e.g. a task is running). */
  maxInterval: () => number;
  /** The shortest interval the tasks allow now, in ms (their backends' poll_interval). */
  floor?: () => number;
  /** Called when `failuresBeforeReport` polls in a row failed, once until a poll succeeds again. */
  onFailure: (error: unknown, failures: number) => void;
  /** Called when a poll succeeds after a reported failure. */
  onRecovery: () => void;
  minInterval?: number;
  growth?: number;
  failuresBeforeReport?: number;
}

export class SidebarPoll {
  readonly minInterval: number;
  private readonly poll: Poll<boolean>;
  private readonly growth: number;
  private readonly failuresBeforeReport: number;
  private running: Promise<boolean> | null = null;
  private _interval: number;
  private _failures = 0;
  private reported = false;

  constructor(private readonly options: ISidebarPollOptions) {
    this.minInterval = options.minInterval ?? 2000;
    this.growth = options.growth ?? 1.5;
    this.failuresBeforeReport = options.failuresBeforeReport ?? 3;
    this._interval = this.minInterval;
    this.poll = new Poll<boolean>({
      auto: false,
      name: 'tpi-jupyter:sidebar',
      factory: () => this.tick(),
      // failures are handled in tick() (it never rejects), so Poll's own backoff stays unused
      frequency: { interval: this._interval, max: this._interval, backoff: false },
      standby: () => !this.options.active() || document.visibilityState === 'hidden'
    });
  }

  /** The delay before the next scheduled poll, in ms. */
  get interval(): number {
    return this._interval;
  }

  /** Consecutive failed polls. */
  get failures(): number {
    return this._failures;
  }

  /** Poll now and then on schedule (when the panel is shown); no-op if already polling. */
  start(): void {
    void this.poll.start();
  }

  /** No more polls until start() (when the panel is hidden). */
  stop(): void {
    void this.poll.stop();
  }

  dispose(): void {
    this.poll.dispose();
  }

  /**
   * Poll now, then at the shortest interval: after a user action or a change
   * seen elsewhere. Resolves when that poll is done.
   */
  async now(): Promise<void> {
    this._interval = this.floor();
    await this.poll.refresh();
    if (this.poll.state.phase === 'refreshed') {
      await this.poll.tick.catch(() => undefined); // the refresh's poll is done (or disposed)
    }
  }

  private floor(): number {
    return Math.max(this.minInterval, this.options.floor?.() ?? 0);
  }

  /** One poll, its failure bookkeeping, and the interval to the next one. */
  private async tick(): Promise<boolean> {
    let changed = false;
    try {
      changed = await this.serialised();
      this._failures = 0;
      if (this.reported) {
        this.reported = false;
        this.options.onRecovery();
      }
    } catch (error) {
      this._failures += 1;
      if (this._failures >= this.failuresBeforeReport && !this.reported) {
        this.reported = true;
        this.options.onFailure(error, this._failures);
      }
    }
    const floor = this.floor();
    const cap = Math.max(floor, this.options.maxInterval());
    const grown = Math.min(cap, Math.round(this._interval * this.growth));
    this._interval = Math.max(floor, changed ? floor : grown);
    // read by Poll when it schedules the next tick, right after this resolves
    this.poll.frequency = { interval: this._interval, max: cap, backoff: false };
    return changed;
  }

  /** A poll started while one runs (a refresh during a slow poll) waits for it: no overlap. */
  private async serialised(): Promise<boolean> {
    while (this.running) {
      await this.running.catch(() => undefined);
    }
    const run = this.options.poll();
    this.running = run;
    try {
      return await run;
    } finally {
      if (this.running === run) {
        this.running = null;
      }
    }
  }
}
