// Authpipe's connect routes: /authpipe/connect/attio and /authpipe/callback/attio, as a WHATWG
// handler (Request in, Response out).
import { appOrigin, getAuthpipe } from '../../../lib/authpipe';

let handler: Promise<(request: Request) => Promise<Response>> | undefined;

async function handle(request: Request): Promise<Response> {
  handler ??= getAuthpipe().then((authpipe) => authpipe.fetchHandler({ appOrigin }));
  return (await handler)(request);
}

export { handle as GET, handle as POST };
