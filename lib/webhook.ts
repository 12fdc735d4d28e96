/**
 * What `verifyWebhook` hands the native handle: the headers, in whichever shape the server gave
 * them, as one record with lowercase names; the raw body as bytes. The signature itself is
 * checked in Rust, where the key is.
 */
import * as args from './args';
import { AuthpipeError, invalidArgument, type AuthpipeErrorCode } from './errors';
import type { WebhookInput } from './native';
import type { VerifyWebhookInput } from './types';

const REJECTIONS: ReadonlySet<AuthpipeErrorCode> = new Set<AuthpipeErrorCode>([
  'WEBHOOK_SIGNATURE_MISSING',
  'WEBHOOK_SIGNATURE_MALFORMED',
  'WEBHOOK_SIGNATURE_MISMATCH',
  'WEBHOOK_TIMESTAMP_INVALID',
  'WEBHOOK_TIMESTAMP_EXPIRED',
]);

/**
 * Whether `err` is `verifyWebhook` refusing the request itself (unsigned, badly signed, forged,
 * too old): answer it 401. Other errors (no secret configured, an unknown provider) are the
 * app's to fix, and are better left to fail loudly.
 * @example
 * try {
 *   await authpipe.verifyWebhook({ provider: 'attio', tenantId, headers: req.headers, body: req.body });
 * } catch (err) {
 *   if (isWebhookRejection(err)) return res.sendStatus(401);
 *   throw err;
 * }
 */
export function isWebhookRejection(err: unknown): err is AuthpipeError {
  return err instanceof AuthpipeError && REJECTIONS.has(err.code);
}

const INPUT_FIELDS = ['provider', 'tenantId', 'name', 'method', 'url', 'headers', 'body'] as const;

/** @internal */
export function webhookInput(input: VerifyWebhookInput): WebhookInput {
  const i = args.fields(input, 'webhook', INPUT_FIELDS);
  return {
    provider: args.string(i.provider, 'provider'),
    tenantId: args.optionalString(i.tenantId, 'tenantId'),
    name: args.optionalString(i.name, 'name'),
    method: args.optionalString(i.method, 'method'),
    url: args.optionalString(i.url, 'url'),
    headers: webhookHeaders(i.headers),
    body: rawBody(i.body),
  };
}

/**
 * A fetch `Headers`, Node's `req.headers` (`IncomingHttpHeaders`) or a plain record, as one
 * record with lowercase names and no prototype (napi reads inherited names too). A list value is
 * joined with `, ` as HTTP combines repeated headers (a signature given twice then fails as
 * malformed); a name given twice in different cases is refused, since which copy counts would
 * otherwise depend on the object's key order.
 */
function webhookHeaders(value: unknown): Record<string, string> {
  const headers = Object.create(null) as Record<string, string>;
  if (args.guarded(() => typeof Headers !== 'undefined' && value instanceof Headers, 'headers')) {
    for (const [name, v] of args.guarded(() => [...(value as Headers)], 'headers')) headers[name] = v;
    return headers;
  }
  for (const [name, v] of args.entries(value, 'headers')) {
    if (v === undefined) continue;
    const lower = name.toLowerCase();
    if (Object.hasOwn(headers, lower)) throw invalidArgument(`headers: '${lower}' is given more than once (in different cases)`);
    if (args.guarded(() => Array.isArray(v), `headers.${name}`)) {
      headers[lower] = args.list(v, `headers.${name}`).map((item, n) => args.string(item, `headers.${name}[${n}]`)).join(', ');
    } else if (typeof v === 'number') headers[lower] = String(v);
    else headers[lower] = args.string(v, `headers.${name}`);
  }
  return headers;
}

/** The body as received, as a Buffer (a view of the caller's bytes, not a copy). */
function rawBody(value: unknown): Buffer {
  if (typeof value === 'string') return Buffer.from(args.string(value, 'body'), 'utf8');
  // instanceof asks a Proxy's getPrototypeOf trap, which may throw.
  const bytes = args.guarded(() => {
    if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
    if (value instanceof ArrayBuffer) return Buffer.from(value);
    return undefined;
  }, 'body');
  if (bytes !== undefined) return bytes;
  const parsed = typeof value === 'object' && value !== null;
  throw invalidArgument(
    parsed
      ? 'body must be the raw request body (a Buffer, Uint8Array or string), not a parsed object: JSON parsed and serialised again is not what the provider signed. In Express, use express.raw({ type: "application/json" }) on the webhook route'
      : 'body must be the raw request body: a Buffer, Uint8Array or string',
  );
}
