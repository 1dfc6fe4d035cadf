/**
 * The sidebar's polling schedule: fast while things change, backing off while
 * nothing does, paused while the panel is hidden, and reporting a persistent
 * failure once rather than on every poll.
 */

export interface IPollerOptions {
  /** One poll; resolves to whether anything changed. */
  poll: () => Promise<boolean>;
  /** Whether polling may run now (the panel is visible). */
  active: () => boolean;
  /** The longest interval while idle, in ms: may depend on the state (e.g. a task is running). */
  maxInterval: () => number;
  /** Called when `failuresBeforeReport` polls in a row failed, once until a poll succeeds again. */
  onFailure: (error: unknown, failures: number) => void;
  /** Called when a poll succeeds after a reported failure. */
  onRecovery: () => void;
  minInterval?: number;
  growth?: number;
  failuresBeforeReport?: number;
}

export class Poller {
  readonly minInterval: number;
  private readonly growth: number;
  private readonly failuresBeforeReport: number;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private running: Promise<void> | null = null;
  private again = false;
  private stopped = true;
  private _interval: number;
  private _failures = 0;
  private reported = false;

  constructor(private readonly options: IPollerOptions) {
    this.minInterval = options.minInterval ?? 2000;
    this.growth = options.growth ?? 1.5;
    this.failuresBeforeReport = options.failuresBeforeReport ?? 3;
    this._interval = this.minInterval;
  }

  /** The delay before the next poll, in ms. */
  get interval(): number {
    return this._interval;
  }

  /** Consecutive failed polls. */
  get failures(): number {
    return this._failures;
  }

  /** Poll now and then on schedule (when the panel is shown). */
  start(): void {
    if (!this.stopped) {
      return; // already polling (attached and shown both start it)
    }
    this.stopped = false;
    void this.now();
  }

  /** No more polls until start() (when the panel is hidden or disposed). */
  stop(): void {
    this.stopped = true;
    this.clear();
  }

  /**
   * Poll now with the shortest interval: after a user action or a change seen
   * elsewhere. Resolves when that poll is done.
   */
  now(): Promise<void> {
    this._interval = this.minInterval;
    this.clear();
    if (this.running) {
      this.again = true; // one more poll right after the current one
      return this.running;
    }
    this.running = this.run().finally(() => {
      this.running = null;
    });
    return this.running;
  }

  private async run(): Promise<void> {
    do {
      this.again = false;
      if (this.stopped || !this.options.active()) {
        return;
      }
      let changed = false;
      try {
        changed = await this.options.poll();
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
      const cap = Math.max(this.minInterval, this.options.maxInterval());
      this._interval =
        changed || this.again
          ? this.minInterval
          : Math.min(cap, Math.round(this._interval * this.growth));
    } while (this.again);
    this.schedule();
  }

  private schedule(): void {
    this.clear();
    if (this.stopped || !this.options.active()) {
      return;
    }
    this.timer = setTimeout(() => {
      this.timer = null;
      if (!this.running) {
        this.running = this.run().finally(() => {
          this.running = null;
        });
      }
    }, this._interval);
  }

  private clear(): void {
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
  }
}
