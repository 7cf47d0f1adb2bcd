/** The QEMU boot harness: command plans (pure) and running VMs. See docs/qemu.md. */
export * from './plan.ts';
export * from './harness.ts';
export * from './shell.ts';
