import { existsSync, statSync } from 'node:fs';
import { Argument, Command, Option } from 'commander';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { quoteCommand } from '#common/exec.ts';
import { archFromFileName, bootVm, formatFromFileName, parseMarkerFields, READY_MARKER, TCG_CPU, type Arch, type HostForward } from '#qemu/index.ts';
import type { CliContext } from '../context.ts';

interface BootCliOptions {
  uefi?: boolean;
  arch?: Arch;
  seed?: string;
  timeout: string;
  log?: string;
  forward: string[];
  memory: string;
  cpus: string;
  cpu?: string;
  write?: boolean;
  keepRunning?: boolean;
  json?: boolean;
}

const usage = (message: string): GeminiError => new GeminiError(message, ExitCode.invalidInput);

function positiveNumber(flag: string, value: string, integer: boolean): number {
  const n = Number(value);
  if (!/^\d+(\.\d+)?$/.test(value) || !(n > 0) || (integer && !Number.isInteger(n))) {
    throw usage(`${flag}: expected a positive ${integer ? 'whole ' : ''}number, found ${JSON.stringify(value)}`);
  }
  return n;
}

function parseForward(spec: string): HostForward {
  const m = /^(?:(tcp|udp):)?(\d{1,5}):(\d{1,5})$/.exec(spec);
  const [hostPort, guestPort] = [Number(m?.[2]), Number(m?.[3])];
  if (!m || hostPort < 1 || hostPort > 65535 || guestPort < 1 || guestPort > 65535) {
    throw usage(`--forward: expected HOST:GUEST ports (e.g. 2222:22, optionally udp:5353:53), found ${JSON.stringify(spec)}`);
  }
  return { hostPort, guestPort, proto: (m[1] as 'tcp' | 'udp' | undefined) ?? 'tcp' };
}

export function registerQemu(program: Command, ctx: () => CliContext): void {
  const qemu = program.command('qemu').description('boot images in QEMU (software emulation, no KVM needed)');
  qemu
    .command('boot')
    .description('boot a disk image in QEMU and wait for the GEMINIK8S-READY line on its serial console')
    .addArgument(new Argument('<image>', 'disk image file: .raw, .img or .qcow2'))
    .option('--uefi', 'boot with UEFI (OVMF); arm64 always boots with UEFI (AAVMF)')
    .addOption(new Option('--arch <arch>', 'guest architecture (default: from -amd64/-arm64 in the file name)').choices(['amd64', 'arm64']))
    .option('--seed <path>', 'NoCloud seed: a directory (made into a cidata ISO) or an ISO file')
    .option('--timeout <seconds>', 'give up waiting for the ready line after this long', '600')
    .option('--log <file>', 'also keep the serial console in this file')
    .option('--forward <host:guest>', 'forward 127.0.0.1:HOST to the guest port GUEST (repeatable)', (v: string, prev: string[]) => [...prev, v], [] as string[])
    .option('--memory <MiB>', 'guest memory in MiB', '2048')
    .option('--cpus <n>', 'virtual CPUs', '2')
    .option('--cpu <model>', `QEMU -cpu value (default: ${TCG_CPU.amd64} on amd64, ${TCG_CPU.arm64} on arm64)`)
    .option('--write', 'boot the image itself, keeping changes (default: a throwaway overlay)')
    .option('--keep-running', 'leave the VM running after the ready line, until interrupted')
    .option('--json', 'print one JSON object')
    .action(async (image: string, opts: BootCliOptions) => {
      const c = ctx();
      if (!existsSync(image) || !statSync(image).isFile()) throw usage(`image ${image} does not exist or is not a file`);
      const arch = opts.arch ?? archFromFileName(image);
      if (!arch) throw usage(`cannot tell the architecture of ${image} from its name (no -amd64 or -arm64): pass --arch amd64|arm64`);
      const format = formatFromFileName(image);
      if (!format) throw usage(`cannot tell the format of ${image} from its extension: expected .raw, .img or .qcow2`);
      if (opts.seed !== undefined && !existsSync(opts.seed)) throw usage(`--seed: ${opts.seed} does not exist`);
      const timeoutS = positiveNumber('--timeout', opts.timeout, false);
      const memoryMiB = positiveNumber('--memory', opts.memory, true);
      const cpus = positiveNumber('--cpus', opts.cpus, true);
      const hostfwd = opts.forward.map(parseForward);
      const firmware = opts.uefi || arch === 'arm64' ? 'uefi' : 'bios';

      const vm = await bootVm({
        arch, firmware, image, format, write: opts.write, seed: opts.seed, memoryMiB, cpus, cpu: opts.cpu, serialLog: opts.log,
        networks: [{ kind: 'user', hostfwd }],
        onProgress: (m) => c.logger.info(m),
      });
      try {
        c.logger.debug(`QEMU pid ${vm.pid}: ${quoteCommand(vm.plan)}`);
        for (const f of hostfwd) c.logger.info(`forwarding 127.0.0.1:${f.hostPort} to guest port ${f.guestPort}/${f.proto}`);
        c.logger.info(`waiting up to ${timeoutS} s for GEMINIK8S-READY on the serial console${opts.log ? ` (log: ${opts.log})` : ''}`);
        const ready = await vm.waitFor(READY_MARKER, timeoutS * 1000);
        const bootSeconds = Number((ready.elapsedMs / 1000).toFixed(1));
        if (opts.json) {
          c.print(JSON.stringify({
            image, arch, firmware, format, overlay: !opts.write, marker: ready.line, fields: parseMarkerFields(ready.line),
            bootSeconds, guestUptimeSeconds: ready.guestUptimeS ?? null, serialLog: opts.log ?? null,
          }));
        } else {
          c.print(ready.line);
          c.print(`boot time: ${bootSeconds.toFixed(1)} s${ready.guestUptimeS !== undefined ? ` (guest uptime ${ready.guestUptimeS} s)` : ''}`);
        }
        if (opts.keepRunning) {
          c.logger.info(`the VM keeps running (QEMU pid ${vm.pid}, QMP socket ${vm.qmpSocket}); press Ctrl-C to stop it`);
          await vm.exited;
          c.logger.info(`QEMU exited (${vm.exitStatus})`);
        }
      } finally {
        await vm.stop();
      }
    });
}
