/** Small display helpers. */

/** 75 -> "1m 15s", 3700 -> "1h 01m". */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) {
    return `${s}s`;
  }
  const m = Math.floor(s / 60);
  if (m < 60) {
    return `${m}m ${String(s % 60).padStart(2, '0')}s`;
  }
  const h = Math.floor(m / 60);
  if (h < 48) {
    return `${h}h ${String(m % 60).padStart(2, '0')}m`;
  }
  return `${Math.floor(h / 24)}d ${String(h % 24).padStart(2, '0')}h`;
}

/** A displayed log line's limit in UTF-8 bytes, as the notebook widget's (textview.MAX_LINE_BYTES). */
export const MAX_LINE_BYTES = 10_000;

/** The line itself when short, else its first MAX_LINE_BYTES bytes and how many bytes were cut. */
export function clipLine(text: string, limit = MAX_LINE_BYTES): string {
  if (text.length * 3 <= limit) {
    return text; // short for any encoding: skip the encoder
  }
  const bytes = new TextEncoder().encode(text);
  if (bytes.length <= limit) {
    return text;
  }
  const kept = new TextDecoder().decode(bytes.slice(0, limit)).replace(/\uFFFD$/, '');
  const cut = bytes.length - new TextEncoder().encode(kept).length;
  return `${kept} … [line cut: ${cut} more bytes]`;
}

export function formatSize(bytes: number): string {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

/** Epoch seconds -> local "HH:MM:SS". */
export function formatTime(epochSeconds: number): string {
  const d = new Date(epochSeconds * 1000);
  return [d.getHours(), d.getMinutes(), d.getSeconds()]
    .map(n => String(n).padStart(2, '0'))
    .join(':');
}

export function formatSpot(spot: number | string | undefined): string {
  const value = Number(spot);
  if (spot === undefined || Number.isNaN(value)) {
    return '';
  }
  if (value < 0) {
    return 'on-demand';
  }
  return value === 0 ? 'spot' : `spot ≤ $${value}/h`;
}

/** document.createElement with a class and text. */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className = '',
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}
