// The slow tier: QEMU boots, image builds, two-node clusters. Run with `npm run e2e -- <suite>`.
export default {
  files: ['test/e2e/**/*.test.ts'],
  extensions: { ts: 'module' },
  nodeArguments: ['--import=tsx'],
  timeout: '40m',
  concurrency: 1,
  serial: true,
  verbose: true,
  workerThreads: false,
};
