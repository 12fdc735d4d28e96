/**
 * `authpipe.handler()`: the routes as a plain Node `(req, res) => void`, usable with `http`,
 * Express (`app.use('/authpipe', handle)`) and Fastify
 * (`fastify.all('/authpipe/*', (req, reply) => { reply.hijack(); handle(req.raw, reply.raw); })`).
 * @internal
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { invalidArgument } from '../errors';
import { createRoutes, MAX_BODY_BYTES, type HandlerBackend, type HandlerOptions } from './routes';

export function createNodeHandler(backend: HandlerBackend, options: HandlerOptions<IncomingMessage>): (req: IncomingMessage, res: ServerResponse) => void {
  const routes = createRoutes(backend, options);
  return (req, res) => {
    void routes({
      method: req.method ?? 'GET',
      // Express strips its mount path from req.url; originalUrl keeps the whole path.
      url: (req as { originalUrl?: string }).originalUrl ?? req.url ?? '/',
      header: (name) => req.headers[name],
      encrypted: Boolean((req.socket as { encrypted?: boolean }).encrypted),
      form: () => readForm(req),
      raw: req,
    }).then((answer) => {
      if (!res.headersSent) res.writeHead(answer.status, answer.headers).end(answer.body);
    });
  };
}

/**
 * A form body, at most {@link MAX_BODY_BYTES}. Past that it rejects at once and drains the rest
 * unread: the stream is not destroyed, since that would close the socket before the 400 page.
 */
function readForm(req: IncomingMessage): Promise<URLSearchParams> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size <= MAX_BODY_BYTES) return void chunks.push(chunk);
      req.off('data', onData).off('end', onEnd).resume();
      chunks.length = 0;
      reject(invalidArgument('the request body is larger than 64 KiB'));
    };
    const onEnd = () => resolve(new URLSearchParams(Buffer.concat(chunks).toString('utf8')));
    req.on('data', onData).on('end', onEnd).once('error', reject);
  });
}
