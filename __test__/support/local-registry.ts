/**
 * A minimal npm registry on 127.0.0.1 that serves the tarballs `npm run pack` wrote, and nothing
 * else: npm resolves `@authpipe/node` and its optionalDependencies as it would from the public
 * registry (platform packages chosen by os/cpu/libc), offline, with no other package reachable.
 *
 * Platform packages without a tarball here (other operating systems) are listed with their
 * manifests from npm/<platform>/, as the public registry lists them; npm skips them on os/cpu
 * before it would fetch a tarball.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';

export const ROOT = join(__dirname, '..', '..');
export const PACK_DIR = join(ROOT, 'pack');

interface PackedPackage {
  name: string;
  /** The package.json inside the tarball. */
  manifest: Record<string, unknown>;
  file: string;
  tarball: number;
  unpacked: number;
  files: number;
}

export interface PackManifest {
  version: string;
  packages: PackedPackage[];
}

/** pack/manifest.json, or a clear failure when `npm run pack` has not run. */
export function readPackManifest(): PackManifest {
  try {
    return JSON.parse(readFileSync(join(PACK_DIR, 'manifest.json'), 'utf8')) as PackManifest;
  } catch {
    throw new Error('pack/manifest.json is missing: run `npm run pack` first (`npm test` runs it before these tests)');
  }
}

export interface LocalRegistry {
  url: string;
  /** Package names npm asked for, in order (to see what an install looked up). */
  readonly requested: string[];
  close(): Promise<void>;
}

export async function startLocalRegistry(): Promise<LocalRegistry> {
  const { version, packages } = readPackManifest();
  const tarballs = new Map<string, Buffer>();
  /** Package name -> its packument (the registry's JSON for it), once the origin is known. */
  const packuments = new Map<string, string>();
  const requested: string[] = [];

  const server: Server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname).slice(1);
    const tarball = path.startsWith('-/') ? tarballs.get(path.slice(2)) : undefined;
    if (tarball) {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': tarball.length }).end(tarball);
      return;
    }
    requested.push(path);
    const packument = packuments.get(path);
    if (packument) res.writeHead(200, { 'content-type': 'application/json' }).end(packument);
    else res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":"not found"}');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  const publish = (name: string, manifest: Record<string, unknown>) =>
    packuments.set(name, JSON.stringify({ name, 'dist-tags': { latest: version }, versions: { [version]: manifest } }));
  for (const pkg of packages) {
    const bytes = readFileSync(join(PACK_DIR, pkg.file));
    tarballs.set(pkg.file, bytes);
    publish(pkg.name, { ...pkg.manifest, dist: distOf(`${origin}/-/${pkg.file}`, bytes) });
  }
  for (const platform of readdirSync(join(ROOT, 'npm'))) {
    const manifest = JSON.parse(readFileSync(join(ROOT, 'npm', platform, 'package.json'), 'utf8')) as Record<string, unknown> & { name: string };
    if (!packuments.has(manifest.name)) publish(manifest.name, { ...manifest, version, dist: { tarball: `${origin}/-/not-built-here.tgz` } });
  }

  return {
    url: `${origin}/`,
    requested,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

function distOf(tarball: string, bytes: Buffer) {
  return {
    tarball,
    shasum: createHash('sha1').update(bytes).digest('hex'),
    integrity: `sha512-${createHash('sha512').update(bytes).digest('base64')}`,
  };
}
