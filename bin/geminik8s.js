#!/usr/bin/env node
// Runs the TypeScript CLI through tsx so a checkout works without a compile step.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../builder/src/cli/main.ts');
process.exitCode = await main(process.argv);
