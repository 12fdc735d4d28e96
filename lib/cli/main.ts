#!/usr/bin/env node
/**
 * `authpipe`, the command line of @authpipe/node: finds the command, parses its flags, runs it
 * on the store, and turns what went wrong into `authpipe: <CODE>: message` on stderr and an
 * exit code (0 ok, 1 problems found, 2 could not run). No secret is ever printed, and no stack
 * trace unless --debug.
 * @internal
 */
import { AuthpipeError } from '../errors';
import { commandHelp, EXIT_FAILED, EXIT_OK, overviewHelp, parseCommand, splitCommand, usageError, type CommandSpec, type Parsed } from './args';
import { Context } from './context';
import { doctor, doctorCommand } from './commands/doctor';
import { importCommand, importFile } from './commands/import';
import { list, listCommand, show, showCommand, status, statusCommand } from './commands/inspect';
import { deleteTenant, deleteTenantCommand, retireKey, retireKeyCommand, rotateKey, rotateKeyCommand } from './commands/keys';
import { check, checkCommand, refresh, refreshCommand } from './commands/probe';

type Run = (ctx: Context, parsed: Parsed) => Promise<number>;

const COMMANDS: ReadonlyArray<readonly [CommandSpec, Run]> = [
  [statusCommand, status],
  [listCommand, list],
  [showCommand, show],
  [checkCommand, check],
  [refreshCommand, refresh],
  [rotateKeyCommand, rotateKey],
  [retireKeyCommand, retireKey],
  [deleteTenantCommand, deleteTenant],
  [importCommand, importFile],
  [doctorCommand, doctor],
];

/** Commands whose work the first Ctrl-C lets finish (a refresh's new token must be stored). */
const WRITERS = new Set(['check', 'refresh', 'rotate-key', 'delete-tenant', 'import']);

/** What to do next, for the codes whose fix is a CLI flag rather than an API call. */
const HINTS: Partial<Record<string, string>> = {
  VAULT_KEY_MISMATCH: 'the master key is not the one this store was written with: check AUTHPIPE_MASTER_KEY, --master-key-file or --master-keys-file',
  KEY_IN_USE: "tenant keys are still wrapped by it: run 'authpipe rotate-key' (with the new key first) before retiring it",
  UNKNOWN_PROVIDER: 'a custom provider needs its settings: pass --providers <file>',
};

function version(): string {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return (require('../../package.json') as { version: string }).version;
}

export async function main(argv: readonly string[]): Promise<number> {
  const { command, rest } = splitCommand(argv);
  const debug = argv.includes('--debug');
  let ctx: Context | undefined;
  try {
    if (command === undefined || command === 'help') {
      const topic = command === 'help' ? rest.find((a) => !a.startsWith('-')) : undefined;
      if (topic === undefined) {
        if (rest.includes('--version')) process.stdout.write(`${version()}\n`);
        else process.stdout.write(overviewHelp(COMMANDS.map(([spec]) => spec)));
        return command === undefined && rest.length > 0 && !rest.some((a) => ['--help', '-h', '--version'].includes(a)) ? EXIT_FAILED : EXIT_OK;
      }
      const entry = COMMANDS.find(([spec]) => spec.name === topic);
      if (!entry) throw usageError(`unknown command '${topic}'`);
      process.stdout.write(commandHelp(entry[0]));
      return EXIT_OK;
    }
    const entry = COMMANDS.find(([spec]) => spec.name === command);
    if (!entry) throw usageError(`unknown command '${command}'`);
    const [spec, run] = entry;
    const parsed = parseCommand(spec, rest);
    if (parsed.values.help) {
      process.stdout.write(commandHelp(spec));
      return EXIT_OK;
    }
    ctx = new Context(spec.name, parsed);
    const context = ctx;
    const onInterrupt = () => {
      if (context.interrupt.signal.aborted) process.exit(130);
      context.interrupt.abort();
      process.stderr.write('\nauthpipe: stopping after the work under way (Ctrl-C again to quit at once)\n');
    };
    // Commands that write stop between steps; the read-only ones just end on Ctrl-C.
    const graceful = WRITERS.has(spec.name);
    if (graceful) process.on('SIGINT', onInterrupt);
    try {
      return await run(ctx, parsed);
    } finally {
      await ctx.close(); // under the handler still: closing waits for refreshes to be stored
      if (graceful) process.off('SIGINT', onInterrupt);
    }
  } catch (err) {
    report(err, debug);
    return EXIT_FAILED;
  } finally {
    await ctx?.close();
  }
}

function report(err: unknown, debug: boolean): void {
  const e = err instanceof AuthpipeError ? err : new AuthpipeError('INTERNAL', err instanceof Error ? err.message : String(err), { cause: err });
  process.stderr.write(`authpipe: ${e.code}: ${e.message}\n`);
  const hint = HINTS[e.code];
  if (hint) process.stderr.write(`authpipe: hint: ${hint}\n`);
  if (debug) process.stderr.write(`${(e.cause instanceof Error ? e.cause : e).stack}\n`);
}

if (require.main === module) {
  // `authpipe list | head`: the reader has gone, so there is nobody left to tell; stop quietly.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? EXIT_OK);
    throw err;
  });
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      report(err, process.argv.includes('--debug'));
      process.exitCode = EXIT_FAILED;
    },
  );
}
