// The ES module entry of @authpipe/node/testing (see index.mts: one module, two ways in).
export * from './testing.js';
