/**
 * The command line's grammar: global flags, each command's flags and positionals, parsed with
 * node:util's parseArgs (strict: an unknown flag is an error, not silently ignored), and the
 * `--help` text of each command, rendered from the same declarations so the two never differ.
 * @internal
 */
import { parseArgs } from 'node:util';
import { AuthpipeError } from '../errors';

export const EXIT_OK = 0;
/** The command ran and found something wrong: a connection not healthy, a failed check. */
export const EXIT_PROBLEMS = 1;
/** The command could not run: bad arguments, the store unreachable, a wrong key, a bad file. */
export const EXIT_FAILED = 2;

export interface FlagSpec {
  type: 'string' | 'boolean';
  /** Shown after the flag in the help: `--tenant <id>`. */
  value?: string;
  description: string;
  multiple?: boolean;
  short?: string;
}

export interface PositionalSpec {
  name: string;
  optional?: boolean;
}

export interface CommandSpec {
  name: string;
  /** One line, for the command list. */
  summary: string;
  /** Paragraphs after the usage line. */
  description: string;
  positionals: readonly PositionalSpec[];
  flags: Readonly<Record<string, FlagSpec>>;
  examples: readonly string[];
  /** What its exit code 1 means, when it has one. */
  problems?: string;
}

export const GLOBAL_FLAGS: Readonly<Record<string, FlagSpec>> = {
  store: {
    type: 'string',
    value: 'path|url',
    description: 'The store: an SQLite file or a postgres:// URL; it must exist. Default: $AUTHPIPE_STORE, else ./.authpipe/authpipe.db',
  },
  'master-key-file': { type: 'string', value: 'file', description: 'A file holding the master key (base64 or hex). Default: $AUTHPIPE_MASTER_KEY' },
  'master-keys-file': {
    type: 'string',
    value: 'file',
    description: 'A JSON file holding the masterKeys array, [{ "id", "key", "retired"? }], the new key first: for rotation',
  },
  providers: {
    type: 'string',
    value: 'file',
    description: "A JSON file of the providers option (client ids and secrets); needed by refresh. Default: $AUTHPIPE_PROVIDERS",
  },
  json: { type: 'boolean', description: 'Print one JSON document on stdout instead of tables' },
  debug: { type: 'boolean', description: 'Print stack traces of errors' },
  help: { type: 'boolean', short: 'h', description: 'Show help for the command' },
};

export const EXIT_CODES_HELP = `Exit codes:
  0  done, nothing wrong found
  1  problems found (connections not healthy, a failed doctor check, ...)
  2  could not run (bad arguments, store unreachable, wrong master key, invalid input file)`;

export interface Parsed {
  values: Record<string, string | boolean | string[] | undefined>;
  positionals: string[];
}

export function usageError(message: string, command?: string): AuthpipeError {
  const help = command ? `authpipe ${command} --help` : 'authpipe --help';
  return new AuthpipeError('INVALID_ARGUMENT', `${message} (see '${help}')`);
}

/**
 * Finds the command: the first argument that is neither a flag nor the value of a global flag
 * that takes one (`authpipe --store x.db list` works as well as `authpipe list --store x.db`).
 */
export function splitCommand(argv: readonly string[]): { command: string | undefined; rest: string[] } {
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') break;
    if (arg.startsWith('-')) {
      const name = arg.replace(/^--?/, '');
      if (GLOBAL_FLAGS[name]?.type === 'string') i++;
      continue;
    }
    return { command: arg, rest: [...argv.slice(0, i), ...argv.slice(i + 1)] };
  }
  return { command: undefined, rest: [...argv] };
}

/** Parses a command's arguments; wrong ones become INVALID_ARGUMENT naming the command's help. */
export function parseCommand(spec: CommandSpec, argv: readonly string[]): Parsed {
  const options = Object.fromEntries(
    Object.entries({ ...GLOBAL_FLAGS, ...spec.flags }).map(([name, flag]) => [
      name,
      { type: flag.type, ...(flag.multiple ? { multiple: true } : {}), ...(flag.short ? { short: flag.short } : {}) },
    ]),
  );
  let parsed: Parsed;
  try {
    parsed = parseArgs({ args: [...argv], options, strict: true, allowPositionals: true }) as Parsed;
  } catch (err) {
    // parseArgs names the flag, never a value worth hiding (values are ours to print or not).
    throw usageError((err as Error).message.replace(/\. To specify a positional argument.*$/s, ''), spec.name);
  }
  if (parsed.values.help) return parsed;
  const required = spec.positionals.filter((p) => !p.optional).length;
  const { length } = parsed.positionals;
  if (length > spec.positionals.length) {
    throw usageError(`${spec.name} takes ${describeCount(spec.positionals)}, got ${length}`, spec.name);
  }
  if (length < required && length > 0) {
    throw usageError(`${spec.name} takes ${describeCount(spec.positionals)}, got ${length}`, spec.name);
  }
  if (length < required) {
    throw usageError(`${spec.name} needs ${spec.positionals.filter((p) => !p.optional).map((p) => `<${p.name}>`).join(' ')}`, spec.name);
  }
  return parsed;
}

function describeCount(positionals: readonly PositionalSpec[]): string {
  if (positionals.length === 0) return 'no arguments';
  return positionals.map((p) => (p.optional ? `[${p.name}]` : `<${p.name}>`)).join(' ');
}

export function stringFlag(parsed: Parsed, name: string): string | undefined {
  const value = parsed.values[name];
  return typeof value === 'string' ? value : undefined;
}

export function listFlag(parsed: Parsed, name: string): string[] {
  const value = parsed.values[name];
  return Array.isArray(value) ? value : typeof value === 'string' ? [value] : [];
}

/** An integer flag within [min, max], or `fallback` when absent. */
export function integerFlag(parsed: Parsed, name: string, command: string, fallback: number, min: number, max: number): number {
  const value = stringFlag(parsed, name);
  if (value === undefined) return fallback;
  if (!/^\d+$/.test(value) || Number(value) < min || Number(value) > max) {
    throw usageError(`--${name} must be a whole number from ${min} to ${max}`, command);
  }
  return Number(value);
}

/** The help text of a command. */
export function commandHelp(spec: CommandSpec): string {
  const positionals = spec.positionals.map((p) => (p.optional ? ` [${p.name}]` : ` <${p.name}>`)).join('');
  const sections = [
    `Usage: authpipe ${spec.name}${positionals} [flags]`,
    spec.description,
    flagList('Flags:', spec.flags),
    flagList('Global flags:', GLOBAL_FLAGS),
    spec.problems ? `${EXIT_CODES_HELP}\n\n  Exit code 1 here: ${spec.problems}` : EXIT_CODES_HELP,
    `Examples:\n${spec.examples.map((e) => `  ${e}`).join('\n')}`,
  ];
  return sections.filter((s) => s.length > 0 && !s.endsWith(':')).join('\n\n') + '\n';
}

function flagList(title: string, flags: Readonly<Record<string, FlagSpec>>): string {
  const entries = Object.entries(flags).map(([name, flag]) => {
    const short = flag.short ? `-${flag.short}, ` : '';
    return [`  ${short}--${name}${flag.value ? ` <${flag.value}>` : ''}`, flag.description] as const;
  });
  if (entries.length === 0) return title;
  const width = Math.max(...entries.map(([left]) => left.length)) + 2;
  return `${title}\n${entries.map(([left, text]) => `${left.padEnd(width)}${text}`).join('\n')}`;
}

/** The help of `authpipe` itself: every command. */
export function overviewHelp(commands: readonly CommandSpec[]): string {
  const width = Math.max(...commands.map((c) => c.name.length)) + 2;
  return [
    'authpipe: inspect and operate an @authpipe/node credential store.',
    'Usage: authpipe <command> [flags]',
    `Commands:\n${commands.map((c) => `  ${c.name.padEnd(width)}${c.summary}`).join('\n')}`,
    flagList('Global flags:', GLOBAL_FLAGS),
    `Environment:
  AUTHPIPE_STORE       the store, as --store
  AUTHPIPE_MASTER_KEY  the master key, unless --master-key-file or --master-keys-file is given
  AUTHPIPE_PROVIDERS   the providers file, as --providers
  NO_COLOR             no colour even on a terminal`,
    EXIT_CODES_HELP,
    "Run 'authpipe <command> --help' for a command's flags and examples.",
  ].join('\n\n') + '\n';
}
