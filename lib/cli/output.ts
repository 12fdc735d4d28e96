/**
 * What the command line prints: aligned tables and key-value blocks for people, colour only on
 * a terminal (and never with NO_COLOR), one JSON document for scripts, times relative to now,
 * and a progress bar on stderr that only a terminal sees.
 * @internal
 */
import type { Connection, ConnectionStatus } from '../types';

type Stream = NodeJS.WritableStream & { isTTY?: boolean; columns?: number };

export type Paint = (text: string) => string;

export interface Palette {
  bold: Paint;
  dim: Paint;
  red: Paint;
  green: Paint;
  yellow: Paint;
}

const plain: Paint = (text) => text;
const sgr = (open: number, close: number): Paint => (text) => `\x1b[${open}m${text}\x1b[${close}m`;

export function palette(stream: Stream, env: NodeJS.ProcessEnv = process.env): Palette {
  const on = stream.isTTY === true && env.NO_COLOR === undefined && env.TERM !== 'dumb';
  if (!on) return { bold: plain, dim: plain, red: plain, green: plain, yellow: plain };
  return { bold: sgr(1, 22), dim: sgr(2, 22), red: sgr(31, 39), green: sgr(32, 39), yellow: sgr(33, 39) };
}

/** Where a command writes: its stdout, with the palette that suits it. */
export class Output {
  readonly colors: Palette;

  constructor(readonly stream: Stream = process.stdout) {
    this.colors = palette(stream);
  }

  get isTTY(): boolean {
    return this.stream.isTTY === true;
  }

  line(text = ''): void {
    this.stream.write(`${text}\n`);
  }

  json(value: unknown): void {
    this.stream.write(`${JSON.stringify(value, null, 2)}\n`);
  }

  /** Columns padded to their widest cell; a right-aligned column's header is right-aligned too. */
  table(columns: ReadonlyArray<{ header: string; align?: 'right' }>, rows: ReadonlyArray<readonly string[]>): void {
    const widths = columns.map((c, i) => Math.max(c.header.length, ...rows.map((r) => visibleLength(r[i] ?? ''))));
    const render = (cells: readonly string[], paint: Paint = plain) =>
      cells
        .map((cell, i) => {
          const pad = ' '.repeat(widths[i]! - visibleLength(cell));
          if (i === cells.length - 1 && columns[i]!.align !== 'right') return paint(cell); // no trailing blanks
          return columns[i]!.align === 'right' ? pad + paint(cell) : paint(cell) + pad;
        })
        .join('  ');
    this.line(render(columns.map((c) => c.header), this.colors.bold));
    for (const row of rows) this.line(render(row));
  }

  /** `label  value` lines, the labels padded to one width. */
  fields(entries: ReadonlyArray<readonly [string, string]>): void {
    const width = Math.max(...entries.map(([label]) => label.length)) + 2;
    for (const [label, value] of entries) this.line(`${this.colors.bold(label.padEnd(width))}${value}`);
  }

  status(status: ConnectionStatus | string): string {
    if (status === 'active') return this.colors.green(status);
    if (status === 'degraded' || status === 'expired') return this.colors.yellow(status);
    return this.colors.red(status);
  }
}

const ANSI = /\x1b\[[0-9;]*m/g;

export function visibleLength(text: string): number {
  return [...text.replace(ANSI, '')].length;
}

/**
 * Text from outside (a provider's error message, an id) made safe to print on a terminal:
 * control characters, escape sequences among them, become U+FFFD.
 */
export function printable(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u001f\u007f-\u009f]/g, '\ufffd');
}

/** `in 5m`, `3h ago`, or `-` for none. */
export function relative(date: Date | null, now = Date.now()): string {
  if (date === null) return '-';
  const ms = date.getTime() - now;
  const span = duration(Math.abs(ms));
  return ms >= 0 ? `in ${span}` : `${span} ago`;
}

/** A duration, in the largest unit that keeps it readable: `42s`, `5m`, `3h`, `12d`. */
export function duration(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400 * 2) return `${Math.floor(s / 3600)}h${s % 3600 >= 60 && s < 36000 ? `${Math.floor((s % 3600) / 60)}m` : ''}`;
  return `${Math.floor(s / 86400)}d`;
}

/** An instant for a person: ISO 8601 and how far from now. */
export function when(date: Date | null): string {
  return date === null ? '-' : `${date.toISOString()} (${relative(date)})`;
}

/** When a connection's token expires, for a table cell. */
export function expiry(connection: Connection): string {
  if (connection.type === 'api_key' || connection.expiresAt === null) return 'never';
  const ms = connection.expiresAt.getTime() - Date.now();
  return ms >= 0 ? `in ${duration(ms)}` : `expired ${duration(-ms)} ago`;
}

export function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

/**
 * A progress bar on stderr (`label [=====>    ] 120/500 24% 35/s ETA 11s`), redrawn at most
 * ten times a second, and only when stderr is a terminal: in a pipe or a log file it prints
 * nothing at all. Without a total it shows a spinner, the count and the time taken.
 */
export class Progress {
  readonly #stream: Stream;
  readonly #enabled: boolean;
  readonly #started = Date.now();
  #done = 0;
  #drawnAt = 0;
  #frame = 0;
  #timer: NodeJS.Timeout | undefined;

  constructor(
    readonly label: string,
    readonly total: number | undefined,
    stream: Stream = process.stderr,
  ) {
    this.#stream = stream;
    this.#enabled = stream.isTTY === true;
    if (this.#enabled) {
      this.#draw();
      // Redrawn on a timer too, so the rate, ETA and spinner move while one long call runs.
      this.#timer = setInterval(() => this.#draw(), 250);
      this.#timer.unref();
    }
  }

  advance(by = 1): void {
    this.#done += by;
    if (this.#enabled && Date.now() - this.#drawnAt >= 100) this.#draw();
  }

  /** Removes the bar, leaving the line clean for what comes next. */
  finish(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    if (this.#enabled) this.#stream.write('\r\x1b[2K');
  }

  #draw(): void {
    this.#drawnAt = Date.now();
    const elapsed = (this.#drawnAt - this.#started) / 1000;
    const rate = elapsed > 0 ? this.#done / elapsed : 0;
    const rateText = `${rate >= 10 ? Math.round(rate) : rate.toFixed(1)}/s`;
    let text: string;
    if (this.total === undefined || this.total === 0) {
      const spinner = '|/-\\'[this.#frame++ % 4];
      text = `${this.label} ${spinner} ${this.#done > 0 ? `${this.#done} ` : ''}${elapsed.toFixed(0)}s`;
    } else {
      const width = 30;
      const share = Math.min(1, this.#done / this.total);
      const filled = Math.round(share * width);
      const bar = '='.repeat(Math.max(0, filled - 1)) + (filled > 0 ? (share >= 1 ? '=' : '>') : '') + ' '.repeat(width - filled);
      const eta = rate > 0 && share < 1 ? ` ETA ${duration(((this.total - this.#done) / rate) * 1000)}` : '';
      text = `${this.label} [${bar}] ${this.#done}/${this.total} ${Math.floor(share * 100)}% ${rateText}${eta}`;
    }
    const columns = this.#stream.columns ?? 80;
    this.#stream.write(`\r\x1b[2K${text.slice(0, columns - 1)}`);
  }
}
