/** @type {import('next').NextConfig} */
export default {
  // A native addon: Node loads it at run time; the bundler must not try to.
  serverExternalPackages: ['@authpipe/node'],
};
