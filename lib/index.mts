// The ES module entry: the CommonJS build's own exports, re-exported, so `import` and `require`
// share one Authpipe, one AuthpipeError and one native engine (no dual-package hazard).
export * from './index.js';
