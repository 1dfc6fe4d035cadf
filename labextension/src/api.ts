/**
 * Client of the tpi-jupyter server extension (tpi_jupyter/server/handlers.py).
 *
 * Every request goes through ServerConnection.makeRequest, so it carries the
 * JupyterLab token and XSRF cookie like any other JupyterLab request.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export const STATUSES = [
  'queued',
  'provisioning',
  'running',
  'preempted',
  'succeeded',
  'failed',
  'timeout',
  'destroyed',
  'unknown'
] as const;

export type Status = (typeof STATUSES)[number];

/** Statuses after which nothing changes any more (the server's FINAL). */
export const FINAL: ReadonlySet<string> = new Set(['succeeded', 'failed', 'timeout', 'destroyed']);

export interface ITaskSummary {
  id: string;
  name: string;
  cloud: string;
  machine: string;
  parallelism: number;
  spot?: number | string;
  status: string;
  created: number;
  /** Seconds, as the server computed them when it answered. */
  elapsed: number;
  /** Cost so far as the text view shows it: "$0.42 so far · $1.05/h · at most $25.25". */
  cost?: string;
  workdir?: string;
  output?: string;
  error?: string;
  /** The least seconds between two reads of this task's cloud (its backend's); absent: no limit. */
  poll_interval?: number;
}

export interface IRank {
  rank: number;
  state: string;
  boots: number;
  code: number | null;
  reason: string | null;
}

export interface IEvent {
  time: number;
  kind: string;
  rank: number | null;
  detail: string;
}

export interface ITaskDetail extends ITaskSummary {
  ranks: IRank[];
  events: IEvent[];
}

export interface ILogLine {
  rank: number;
  /** The agent's RFC 3339 UTC stamp, as written in the log (e.g. 2026-01-31T12:00:00.123Z). */
  time: string;
  text: string;
}

export interface ILogs {
  lines: ILogLine[];
  cursor: string;
  status: string;
  final: boolean;
}

export interface IFile {
  path: string;
  size: number;
  local: boolean;
  open_path: string | null;
}

export interface IFiles {
  source: 'workdir' | 'remote' | 'none';
  files: IFile[];
}

export type Action = 'stop' | 'pull' | 'destroy';

export interface IActionResult {
  ok: boolean;
  action: Action;
  status: string;
  files?: string[];
}

/** A failed request: `status` is the HTTP status (0 when the server could not be reached). */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

export class TpiClient {
  constructor(
    private readonly settings: ServerConnection.ISettings = ServerConnection.makeSettings()
  ) {}

  tasks(): Promise<{ tasks: ITaskSummary[] }> {
    return this.request('tasks');
  }

  task(id: string): Promise<ITaskDetail> {
    return this.request(`tasks/${encodeURIComponent(id)}`);
  }

  logs(id: string, cursor: string): Promise<ILogs> {
    const query = URLExt.objectToQueryString({ cursor });
    return this.request(`tasks/${encodeURIComponent(id)}/logs${query}`);
  }

  files(id: string): Promise<IFiles> {
    return this.request(`tasks/${encodeURIComponent(id)}/files`);
  }

  act(id: string, action: Action): Promise<IActionResult> {
    return this.request(`tasks/${encodeURIComponent(id)}/${action}`, {
      method: 'POST'
    });
  }

  private async request<T>(path: string, init: RequestInit = {}): Promise<T> {
    const url = URLExt.join(this.settings.baseUrl, 'tpi', path);
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(url, init, this.settings);
    } catch (error) {
      throw new ApiError(`cannot reach the server: ${String(error)}`, 0);
    }
    const text = await response.text();
    if (!response.ok) {
      throw new ApiError(reason(response, text), response.status);
    }
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new ApiError(`${url}: not JSON`, response.status);
    }
  }
}

/** The server's reason (tornado puts HTTPError's reason in the status line and the JSON body). */
function reason(response: Response, text: string): string {
  try {
    const body = JSON.parse(text) as { message?: string; reason?: string };
    const message = body.message || body.reason;
    if (message) {
      return message;
    }
  } catch {
    // not JSON: fall back to the status line
  }
  return `${response.status} ${response.statusText}`.trim();
}
