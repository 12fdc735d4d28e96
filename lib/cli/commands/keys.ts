/**
 * Keys: `rotate-key` (rewrap every tenant key with the primary master key, or, with --tenant,
 * rotate tenants' data keys) and `retire-key` (retire a master key no tenant key uses), and
 * `delete-tenant`, which destroys a tenant's data key with its records after a confirmation.
 * @internal
 */
import { createInterface } from 'node:readline/promises';
import { AuthpipeError } from '../../errors';
import { nativeHandle } from '../../internal';
import type { TenantKeyRotation } from '../../types';
import { EXIT_OK, listFlag, usageError, type CommandSpec, type Parsed } from '../args';
import type { Context } from '../context';
import { plural, Progress } from '../output';

export const rotateKeyCommand: CommandSpec = {
  name: 'rotate-key',
  summary: 'Rewrap tenant keys with the new master key (or rotate tenant data keys)',
  description: [
    'Master key rotation: put the new key first in the --master-keys-file array, the old one after it, then run',
    "rotate-key: every tenant key is rewrapped with the first key, online (nothing else is re-encrypted). Then",
    "'authpipe retire-key <old id>', then drop the old key from every instance's configuration.",
    '',
    "With --tenant <id> (repeatable): rotates those tenants' data keys instead, re-sealing their records under a new one.",
  ].join('\n'),
  positionals: [],
  flags: { tenant: { type: 'string', value: 'id', multiple: true, description: "Rotate this tenant's data key instead (repeatable)" } },
  examples: [
    'authpipe rotate-key --master-keys-file keys.json      # keys.json: [{"id":"k2","key":"..."},{"id":"k1","key":"..."}]',
    'authpipe retire-key k1 --master-keys-file keys.json',
    'authpipe rotate-key --tenant org_acme',
  ],
};

export async function rotateKey(ctx: Context, parsed: Parsed): Promise<number> {
  const tenants = listFlag(parsed, 'tenant');
  const authpipe = await ctx.open();
  if (tenants.length > 0) {
    const progress = new Progress('Rotating tenant keys', tenants.length);
    const rotations: TenantKeyRotation[] = [];
    try {
      for (const tenant of tenants) {
        if (ctx.interrupt.signal.aborted) break;
        rotations.push(await authpipe.rotateTenantKey(tenant));
        progress.advance();
      }
    } finally {
      progress.finish();
    }
    if (ctx.json) ctx.out.json({ tenants: rotations });
    else {
      ctx.out.table(
        [{ header: 'TENANT' }, { header: 'GENERATION', align: 'right' }, { header: 'RESEALED', align: 'right' }],
        rotations.map((r) => [r.tenantId, String(r.generation), String(r.resealed)]),
      );
    }
    return EXIT_OK;
  }
  const progress = new Progress('Rewrapping tenant keys', undefined);
  let rotation;
  try {
    rotation = await authpipe.rotateMasterKey();
  } finally {
    progress.finish();
  }
  const info = await (await nativeHandle(authpipe)).storeInfo();
  // Keys configured after the primary that wrap nothing now: what retire-key is for.
  const retirable = info.masterKeys.filter((k) => k.configured === 'active' && k.tenantKeys === 0 && k.retiredAt == null).map((k) => k.id);
  if (ctx.json) {
    ctx.out.json({ ...rotation, retirable });
    return EXIT_OK;
  }
  ctx.out.line(`Rewrapped ${plural(rotation.rewrapped, 'tenant key')} with master key '${rotation.primaryKeyId}' (${rotation.alreadyCurrent} already were).`);
  for (const id of retirable) ctx.out.line(`Master key '${id}' wraps no tenant key now: retire it with 'authpipe retire-key ${id}'.`);
  return EXIT_OK;
}

export const retireKeyCommand: CommandSpec = {
  name: 'retire-key',
  summary: 'Retire a master key that no tenant key uses',
  description:
    "Marks a master key retired in the store once no tenant key is wrapped by it (after 'authpipe rotate-key'). It can then be dropped from the configuration, and is refused if configured again. Instances still running with it as their primary key must be restarted with the new one first.",
  positionals: [{ name: 'key-id' }],
  flags: {},
  examples: ['authpipe retire-key k1 --master-keys-file keys.json'],
};

export async function retireKey(ctx: Context, parsed: Parsed): Promise<number> {
  const [id] = parsed.positionals as [string];
  const authpipe = await ctx.open();
  await authpipe.retireMasterKey(id);
  if (ctx.json) ctx.out.json({ retired: id });
  else ctx.out.line(`Retired master key '${id}': remove it from the keys file of every instance.`);
  return EXIT_OK;
}

export const deleteTenantCommand: CommandSpec = {
  name: 'delete-tenant',
  summary: "Delete a tenant: its data key, connections and secrets (asks first)",
  description: [
    "Deletes a tenant in one transaction: destroys its data key (crypto-shredding what backups hold once the master key is gone too)",
    'and deletes its connections, secrets, connect sessions and pending connect flows. Connections are not revoked at the provider.',
    'Asks to type the tenant id on a terminal; --yes skips that, and without a terminal --yes is required.',
  ].join('\n'),
  positionals: [{ name: 'tenant' }],
  flags: { yes: { type: 'boolean', short: 'y', description: 'Do not ask: delete (for scripts)' } },
  examples: ['authpipe delete-tenant org_acme', 'authpipe delete-tenant org_acme --yes --json'],
};

export async function deleteTenant(ctx: Context, parsed: Parsed): Promise<number> {
  const [tenantId] = parsed.positionals as [string];
  const confirmed = parsed.values.yes === true;
  if (!confirmed && !process.stdin.isTTY) {
    throw usageError(`refusing to delete tenant '${tenantId}' without confirmation: stdin is not a terminal, so pass --yes`, ctx.command);
  }
  const authpipe = await ctx.open();
  if (!confirmed) {
    let connections = 0;
    for (let cursor: string | null | undefined; cursor !== null; ) {
      const page = await authpipe.listConnections({ tenantId, cursor, limit: 1000 });
      connections += page.connections.length;
      cursor = page.nextCursor;
    }
    ctx.err.line(`This deletes tenant '${tenantId}': its data key, ${plural(connections, 'connection')}, its secrets, connect sessions and flows.`);
    ctx.err.line('It cannot be undone (connections are not revoked at their providers).');
    const prompt = createInterface({ input: process.stdin, output: process.stderr });
    const onAbort = () => prompt.close();
    // Ctrl-C at the prompt: readline takes it from the terminal; it means no.
    prompt.on('SIGINT', onAbort);
    ctx.interrupt.signal.addEventListener('abort', onAbort, { once: true });
    let answer: string;
    try {
      // A closed prompt (Ctrl-C, end of input) answers nothing: readline leaves its question pending.
      answer = await new Promise<string>((resolve) => {
        prompt.once('close', () => resolve(''));
        prompt.question('Type the tenant id to confirm: ').then(resolve, () => resolve(''));
      });
    } finally {
      ctx.interrupt.signal.removeEventListener('abort', onAbort);
      prompt.close();
    }
    if (answer.trim() !== tenantId) throw new AuthpipeError('INVALID_ARGUMENT', `not confirmed: tenant '${tenantId}' was not deleted`);
  }
  const deleted = await authpipe.deleteTenant(tenantId);
  if (ctx.json) {
    ctx.out.json({ tenantId, ...deleted });
    return EXIT_OK;
  }
  const total = deleted.connections + deleted.secrets + deleted.sessions + deleted.flows;
  if (total === 0) ctx.out.line(`Tenant '${tenantId}' had nothing stored; its data key, if it had one, is destroyed.`);
  else {
    ctx.out.line(
      `Deleted tenant '${tenantId}': ${plural(deleted.connections, 'connection')}, ${plural(deleted.secrets, 'secret')}, ${plural(deleted.sessions, 'connect session')}, ${plural(deleted.flows, 'connect flow')}.`,
    );
  }
  return EXIT_OK;
}
