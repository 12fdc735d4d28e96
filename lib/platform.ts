/**
 * Which binary this machine needs, in napi-rs's platform naming. No side effects, so tests and
 * tools can ask without loading the addon.
 * @internal
 */
import { readFileSync } from 'node:fs';

/**
 * The platforms a binary is published for: `napi.targets` in package.json, as the suffix of the
 * platform package `@authpipe/node-<platform>`. A test keeps the two lists equal.
 */
export const SUPPORTED_PLATFORMS = Object.freeze([
  'linux-x64-gnu',
  'linux-arm64-gnu',
  'linux-x64-musl',
  'linux-arm64-musl',
  'darwin-x64',
  'darwin-arm64',
  'win32-x64-msvc',
] as const);

/** This process's platform in napi-rs's naming (`linux-x64-gnu`, `darwin-arm64`, `win32-x64-msvc`). */
export function currentPlatform(): string {
  const { platform, arch } = process;
  if (platform === 'linux') return `${platform}-${arch}-${isMusl() ? 'musl' : 'gnu'}`;
  if (platform === 'win32') return `${platform}-${arch}-msvc`;
  return `${platform}-${arch}`;
}

function isMusl(): boolean {
  try {
    // glibc's ldd is a script naming glibc; musl's names musl. Cheaper than a process report.
    if (readFileSync('/usr/bin/ldd', 'utf8').includes('musl')) return true;
  } catch {
    // No ldd (distroless images): ask the runtime instead.
  }
  const header = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header;
  return header !== undefined && header.glibcVersionRuntime === undefined;
}
