/**
 * `authpipe.fetchHandler()`: the routes as a WHATWG `(request: Request) => Promise<Response>`,
 * for servers built on the Fetch API: Next.js App Router route handlers, Hono, Remix, Bun, Deno.
 * @internal
 */
import { invalidArgument } from '../errors';
import { createRoutes, MAX_BODY_BYTES, type HandlerBackend, type HandlerOptions } from './routes';

export function createFetchHandler(backend: HandlerBackend, options: HandlerOptions<Request>): (request: Request) => Promise<Response> {
  const routes = createRoutes(backend, options);
  return async (request) => {
    const url = new URL(request.url);
    const answer = await routes({
      method: request.method,
      url: url.pathname + url.search,
      // Headers joins a repeated header into one value; a doubled session token then fails as one.
      header: (name) => request.headers.get(name) ?? undefined,
      encrypted: url.protocol === 'https:',
      form: () => readForm(request),
      raw: request,
    });
    return new Response(answer.body === '' ? null : answer.body, { status: answer.status, headers: answer.headers });
  };
}

/** A form body, at most {@link MAX_BODY_BYTES}; past that the rest is not read. */
async function readForm(request: Request): Promise<URLSearchParams> {
  if (!request.body) return new URLSearchParams();
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > MAX_BODY_BYTES) {
      await reader.cancel();
      throw invalidArgument('the request body is larger than 64 KiB');
    }
    chunks.push(value);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}
