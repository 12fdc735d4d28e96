/**
 * `import <file.jsonl>`: connections migrated from another tool, one JSON object per line.
 * Every line is checked first (JSON, fields, types, then the core's own checks of ids, tokens
 * and providers, storing nothing); one bad line and nothing is imported. Then the file is read
 * again and imported in batches, each one transaction: all of a batch is stored, or none.
 * @internal
 */
import { createReadStream, existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { AuthpipeError } from '../../errors';
import { importInput } from '../../convert';
import { nativeHandle } from '../../internal';
import type { ImportConnectionInput } from '../../types';
import { EXIT_FAILED, EXIT_OK, integerFlag, type CommandSpec, type Parsed } from '../args';
import { jsonPosition, type Context } from '../context';
import { plural, Progress } from '../output';

const FIELDS = ['provider', 'tenantId', 'userId', 'accessToken', 'refreshToken', 'expiresAt', 'apiKey', 'scopes', 'extras'] as const;
/** Printed in full at most; the rest are counted. */
const MAX_REPORTED = 50;

export const importCommand: CommandSpec = {
  name: 'import',
  summary: 'Import connections from a JSON Lines file (all lines checked first)',
  description: [
    'Imports connections from another tool: one JSON object per line (blank lines are skipped), with',
    '  provider, tenantId, userId              the connection',
    '  accessToken, refreshToken?, expiresAt?  an OAuth token set; expiresAt in ms since the epoch, or ISO 8601',
    '  apiKey                                  or an API key',
    '  scopes?, extras?                        granted scopes (an array), provider fields to keep (an object)',
    'Every line is checked before anything is stored: each bad line is reported by number (never its content), and then',
    'nothing is imported. Then lines are imported in batches of --batch-size, each one transaction (all of it or none);',
    'an existing connection with the same (provider, tenantId, userId) is replaced, so a failed import can be run again.',
  ].join('\n'),
  positionals: [{ name: 'file.jsonl' }],
  flags: {
    'batch-size': { type: 'string', value: 'n', description: 'Connections per transaction (default 500, at most 1000)' },
    'dry-run': { type: 'boolean', description: 'Check every line, import nothing' },
  },
  examples: [
    `echo '{"provider":"attio","tenantId":"org_acme","userId":"u1","accessToken":"..."}' > tokens.jsonl`,
    'authpipe import tokens.jsonl --providers providers.json',
    'authpipe import tokens.jsonl --dry-run',
  ],
};

interface Problem {
  line: number;
  code: string;
  message: string;
}

type Checked = ReturnType<typeof importInput>;

/** A line's connection checked for its JS shape, or why not (the message names fields, never values). */
function parseLine(text: string): ImportConnectionInput {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new AuthpipeError('INVALID_ARGUMENT', `not valid JSON${jsonPosition(err, text)}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new AuthpipeError('INVALID_ARGUMENT', 'not a JSON object');
  const record = value as Record<string, unknown>;
  for (const name of Object.keys(record)) {
    if ((FIELDS as readonly string[]).includes(name)) continue;
    const camel = name.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
    const hint = (FIELDS as readonly string[]).includes(camel) ? ` (did you mean '${camel}'?)` : '';
    throw new AuthpipeError('INVALID_ARGUMENT', `unknown field '${name.slice(0, 64)}'${hint}`);
  }
  const { expiresAt } = record;
  if (typeof expiresAt === 'string') {
    const ms = Date.parse(expiresAt);
    if (Number.isNaN(ms)) throw new AuthpipeError('INVALID_ARGUMENT', 'expiresAt must be ms since the epoch or an ISO 8601 date');
    record.expiresAt = ms;
  } else if (typeof expiresAt === 'number' && expiresAt > 0 && expiresAt < 1e11) {
    // 1e11 ms is 1973; 1e11 s is the year 5138: such a number is seconds.
    throw new AuthpipeError('INVALID_ARGUMENT', 'expiresAt looks like seconds since the epoch; give milliseconds (or an ISO 8601 date)');
  }
  return record as unknown as ImportConnectionInput;
}

/** The file's lines, numbered from 1, blank ones left out. */
async function* lines(file: string): AsyncGenerator<{ number: number; text: string }> {
  const reader = createInterface({ input: createReadStream(file, { encoding: 'utf8' }), crlfDelay: Infinity });
  let number = 0;
  for await (const text of reader) {
    number++;
    if (text.trim() !== '') yield { number, text };
  }
}

export async function importFile(ctx: Context, parsed: Parsed): Promise<number> {
  const [file] = parsed.positionals as [string];
  const batchSize = integerFlag(parsed, 'batch-size', ctx.command, 500, 1, 1000);
  if (!existsSync(file)) throw new AuthpipeError('INVALID_ARGUMENT', `no such file: ${file}`);
  const authpipe = await ctx.open();
  const handle = await nativeHandle(authpipe);

  // Pass 1: check every line; keep only what finds duplicates, not the secrets.
  const problems: Problem[] = [];
  const seen = new Map<string, number>();
  let pending: Array<{ line: number; input: Checked }> = [];
  let valid = 0;
  const checkPending = () => {
    const found = handle.checkImports(pending.map((p) => p.input));
    for (const p of found) problems.push({ line: pending[p.index]!.line, code: p.code, message: p.message });
    valid += pending.length - found.length;
    pending = [];
  };
  const checking = new Progress('Checking', undefined);
  try {
    for await (const { number, text } of lines(file)) {
      checking.advance();
      try {
        const input = importInput(parseLine(text), '');
        const key = JSON.stringify([input.provider, input.tenantId, input.userId]);
        const first = seen.get(key);
        if (first !== undefined) throw new AuthpipeError('INVALID_ARGUMENT', `the same connection (provider, tenantId, userId) as line ${first}`);
        seen.set(key, number);
        pending.push({ line: number, input });
        if (pending.length === batchSize) checkPending();
      } catch (err) {
        const e = err instanceof AuthpipeError ? err : new AuthpipeError('INTERNAL', String(err));
        problems.push({ line: number, code: e.code, message: e.message });
      }
    }
    if (pending.length > 0) checkPending();
  } finally {
    checking.finish();
  }
  const total = valid + problems.length;
  if (problems.length > 0) {
    problems.sort((a, b) => a.line - b.line);
    for (const p of problems.slice(0, MAX_REPORTED)) ctx.err.line(`authpipe: ${p.code}: line ${p.line}: ${p.message}`);
    if (problems.length > MAX_REPORTED) ctx.err.line(`authpipe: ... and ${problems.length - MAX_REPORTED} more invalid lines`);
    throw new AuthpipeError('INVALID_ARGUMENT', `${file}: ${plural(problems.length, 'invalid line')} of ${total}; nothing was imported`);
  }
  if (total === 0) throw new AuthpipeError('INVALID_ARGUMENT', `${file} holds no connections`);
  if (parsed.values['dry-run'] === true) {
    if (ctx.json) ctx.out.json({ file, valid: total, imported: 0, dryRun: true });
    else ctx.out.line(`${file}: all ${plural(total, 'line')} valid; nothing imported (--dry-run).`);
    return EXIT_OK;
  }

  // Pass 2: import in batches.
  const started = Date.now();
  const progress = new Progress('Importing', total);
  let imported = 0;
  let batches = 0;
  let batch: ImportConnectionInput[] = [];
  let firstLine = 0;
  let lastLine = 0;
  const store = async () => {
    try {
      await authpipe.importConnections(batch);
    } catch (err) {
      progress.finish();
      const e = err instanceof AuthpipeError ? err : new AuthpipeError('INTERNAL', String(err));
      const done = imported > 0 ? `lines before ${firstLine} are imported (${plural(imported, 'connection')})` : 'nothing was imported';
      throw new AuthpipeError(e.code, `batch ${batches + 1} (lines ${firstLine}-${lastLine}) was not imported: ${e.message}; ${done}`);
    }
    imported += batch.length;
    batches++;
    progress.advance(batch.length);
    batch = [];
  };
  let interrupted = false;
  try {
    for await (const { number, text } of lines(file)) {
      if (ctx.interrupt.signal.aborted) {
        interrupted = true;
        break;
      }
      if (batch.length === 0) firstLine = number;
      lastLine = number;
      batch.push(parseLine(text));
      if (batch.length === batchSize) await store();
    }
    if (batch.length > 0 && !interrupted) await store();
  } finally {
    progress.finish();
  }
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  if (ctx.json) ctx.out.json({ file, imported, batches, dryRun: false, interrupted });
  else {
    const stopped = interrupted ? ` Interrupted: the remaining ${total - imported} were not imported; run the import again (it replaces what is there).` : '';
    ctx.out.line(`Imported ${plural(imported, 'connection')} from ${file} in ${plural(batches, 'batch', 'batches')} (${seconds}s).${stopped}`);
  }
  return interrupted ? EXIT_FAILED : EXIT_OK;
}
