// The `authpipe` command line on a real terminal: tmux runs it in a 120x40 pane, and the test
// reads the pane (capture-pane) and everything written to it (pipe-pane). On a terminal tables
// are aligned and coloured (not with NO_COLOR), a long import draws a progress bar on stderr and
// clears it, delete-tenant asks for the tenant id; with stderr sent to a file, no bar at all.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, seededStore, workDir } from './cli';

const dir = workDir();
// A server of this test's own, its socket in a directory of its own: removed after the server
// is killed (Jest may run workDir()'s cleanup first, and a server whose socket is gone lives on).
const socketDir = mkdtempSync(join(tmpdir(), 'authpipe-tmux-'));
const socket = join(socketDir, 'tmux.sock');
const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('AUTHPIPE_') && name !== 'NO_COLOR'));

function tmux(...args: string[]): string {
  return execFileSync('tmux', ['-S', socket, ...args], { encoding: 'utf8', env: { ...env, TERM: 'xterm-256color' } });
}

/** The pane as text (`escapes`: with its colours as SGR sequences). */
function screen(escapes = false): string {
  return tmux('capture-pane', '-p', '-J', ...(escapes ? ['-e'] : []), '-t', 'cli');
}

/** Polls the pane until `pattern` shows (the event), up to `timeoutMs`. */
async function waitFor(pattern: RegExp, timeoutMs = 20_000): Promise<RegExpExecArray> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const match = pattern.exec(screen());
    if (match) return match;
    if (Date.now() > deadline) throw new Error(`the pane never showed ${pattern}:\n${screen()}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

let runs = 0;
/** Types `command` into the pane's shell on a cleared screen; resolves with its exit code. */
async function run(command: string): Promise<number> {
  const marker = `__done_${++runs}`;
  tmux('send-keys', '-t', 'cli', '-l', `clear; ${command}; echo ${marker} $?`);
  tmux('send-keys', '-t', 'cli', 'Enter');
  const [, code] = await waitFor(new RegExp(`^${marker} (\\d+)$`, 'm'));
  return Number(code);
}

let cli: string;

beforeAll(async () => {
  const tenants = ['org_a', 'org_with_a_longer_name'];
  const connections = tenants.flatMap((tenantId) => [
    { provider: 'attio', tenantId, userId: 'u1', accessToken: `t-${tenantId}` },
    { provider: 'close', tenantId, userId: 'user_number_two', apiKey: `k-${tenantId}` },
  ]);
  const { store, keyFile } = await seededStore('sqlite', dir, 'tty', connections);
  cli = `node ${CLI} --store ${store} --master-key-file ${keyFile}`;
  tmux('new-session', '-d', '-s', 'cli', '-x', '120', '-y', '40', 'bash --norc --noprofile');
  tmux('set-option', '-t', 'cli', 'history-limit', '0');
});

afterAll(() => {
  try {
    tmux('kill-server'); // this test's own server (its own socket), nobody else's
  } finally {
    rmSync(socketDir, { recursive: true, force: true });
  }
});

test('list on a terminal: an aligned, coloured table', async () => {
  expect(await run(`${cli} list`)).toBe(0);
  const lines = screen().split('\n');
  const header = lines.find((l) => l.startsWith('TENANT'))!;
  const rows = lines.filter((l) => l.startsWith('org_'));
  expect(rows).toHaveLength(4);
  for (const row of rows) {
    for (const [column, pattern] of [['PROVIDER', /^(attio|close) /], ['USER', /^(u1|user_number_two) /], ['TYPE', /^(oauth2|api_key) /], ['STATUS', /^active /], ['EXPIRES', /^never /], ['LAST ERROR', /^-$/]] as const) {
      expect(row.slice(header.indexOf(column))).toMatch(pattern);
    }
  }
  const coloured = screen(true);
  expect(coloured).toMatch(/\x1b\[1mTENANT/); // bold header
  expect(coloured).toMatch(/\x1b\[32mactive/); // green status

  expect(await run(`NO_COLOR=1 ${cli} list`)).toBe(0);
  expect(screen(true)).not.toMatch(/\x1b\[(1|32)m/);
  expect(await run(`${cli} list | cat`)).toBe(0); // stdout a pipe: no colour either
  expect(screen(true)).not.toMatch(/\x1b\[(1|32)m/);
});

test('import on a terminal: a progress bar on stderr, cleared at the end; none when stderr is a file', async () => {
  const file = join(dir, 'many.jsonl');
  const total = 4000;
  writeFileSync(file, Array.from({ length: total }, (_, i) => JSON.stringify({ provider: 'attio', tenantId: `org_${i % 9}`, userId: `user${i}`, accessToken: `token-${i}` })).join('\n'));
  const log = join(dir, 'pane.log');
  tmux('pipe-pane', '-o', '-t', 'cli', `cat >> ${log}`);
  expect(await run(`${cli} import ${file} --batch-size 5`)).toBe(0);
  tmux('pipe-pane', '-t', 'cli'); // stop logging
  expect(screen()).toMatch(new RegExp(`^Imported ${total} connections from .* in 800 batches`, 'm'));
  expect(screen()).not.toContain('Importing ['); // cleared

  const written = readFileSync(log, 'utf8');
  const frames = [...written.matchAll(/Importing \[([= >]{30})\] (\d+)\/4000 (\d+)% [\d.]+\/s( ETA \S+)?/g)];
  expect(frames.length).toBeGreaterThan(1);
  const counts = frames.map((f) => Number(f[2]));
  expect(counts[0]).toBe(0);
  expect(counts.some((n) => n > 0 && n < total)).toBe(true); // drawn while it ran
  expect(frames.some((f) => f[4] !== undefined)).toBe(true); // with an ETA
  expect([...counts].sort((a, b) => a - b)).toEqual(counts); // only forward

  const errFile = join(dir, 'stderr.txt');
  expect(await run(`${cli} import ${file} --batch-size 50 2> ${errFile}`)).toBe(0);
  expect(readFileSync(errFile, 'utf8')).toBe('');
});

test('delete-tenant on a terminal asks for the tenant id', async () => {
  tmux('send-keys', '-t', 'cli', '-l', `clear; ${cli} delete-tenant org_a; echo __asked $?`);
  tmux('send-keys', '-t', 'cli', 'Enter');
  await waitFor(/This deletes tenant 'org_a': its data key, 2 connections/);
  await waitFor(/Type the tenant id to confirm: $/m);
  tmux('send-keys', '-t', 'cli', '-l', 'org_b');
  tmux('send-keys', '-t', 'cli', 'Enter');
  await waitFor(/^__asked 2$/m);
  expect(screen()).toContain("authpipe: INVALID_ARGUMENT: not confirmed: tenant 'org_a' was not deleted");

  tmux('send-keys', '-t', 'cli', '-l', `clear; ${cli} delete-tenant org_a; echo __interrupted $?`);
  tmux('send-keys', '-t', 'cli', 'Enter');
  await waitFor(/Type the tenant id to confirm: $/m);
  tmux('send-keys', '-t', 'cli', 'C-c'); // means no
  await waitFor(/^__interrupted 2$/m);
  expect(screen()).toContain("not confirmed: tenant 'org_a' was not deleted");

  tmux('send-keys', '-t', 'cli', '-l', `clear; ${cli} delete-tenant org_a; echo __confirmed $?`);
  tmux('send-keys', '-t', 'cli', 'Enter');
  await waitFor(/Type the tenant id to confirm: $/m);
  tmux('send-keys', '-t', 'cli', '-l', 'org_a');
  tmux('send-keys', '-t', 'cli', 'Enter');
  await waitFor(/^__confirmed 0$/m);
  expect(screen()).toContain("Deleted tenant 'org_a': 2 connections");
});

test('Ctrl-C during an import: the batch under way is stored, the rest is not, exit 2', async () => {
  const file = join(dir, 'slow.jsonl');
  const total = 20000;
  writeFileSync(file, Array.from({ length: total }, (_, i) => JSON.stringify({ provider: 'attio', tenantId: 'org_slow', userId: `user${i}`, accessToken: `token-${i}` })).join('\n'));
  tmux('send-keys', '-t', 'cli', '-l', `clear; ${cli} import ${file} --batch-size 1; echo __stopped $?`);
  tmux('send-keys', '-t', 'cli', 'Enter');
  await waitFor(/Importing \[[= >]+\] [1-9]\d*\/20000/); // under way
  tmux('send-keys', '-t', 'cli', 'C-c');
  await waitFor(/^__stopped 2$/m);
  const [, imported] = /^Imported (\d+) connections from .* Interrupted: the remaining (\d+) were not imported/m.exec(screen())!;
  expect(Number(imported)).toBeGreaterThan(0);
  expect(Number(imported)).toBeLessThan(total);
  expect(await run(`${cli} list --tenant org_slow --all --json > ${join(dir, 'slow.json')}`)).toBe(0);
  expect(JSON.parse(readFileSync(join(dir, 'slow.json'), 'utf8')).connections).toHaveLength(Number(imported));
});
