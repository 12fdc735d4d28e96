// The telemetry flow with no logger and no meter provider, in a process of its own so that the
// spec (logging.spec.ts) sees every byte it writes to stdout and stderr, the engine's included:
// there must be none. Exits 0 once the flow ran; a failure's message goes to stderr.
import { runFlow, startRig } from './telemetry-flow';

void (async () => {
  const rig = await startRig();
  try {
    await runFlow(rig);
    await rig.authpipe.metrics(); // asked for, not pushed anywhere
  } finally {
    await rig.close();
  }
})().catch((err: unknown) => {
  process.stderr.write(`flow failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
