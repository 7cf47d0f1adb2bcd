import { ExitCode, GeminiError } from '#common/errors.ts';
import { SECTOR } from './layout.ts';

// Offsets in GRUB's i386-pc boot.img (include/grub/i386/pc/boot.h).
const KERNEL_SECTOR = 0x5c;
const BOOT_DRIVE = 0x64;
const DRIVE_CHECK = 0x66;
/** The MBR's code area; the disk signature and partition table follow it. */
const MBR_CODE = 440;
/** diskboot.img (core.img's first sector) ends with its first blocklist entry: start u64, len u16, segment u16. */
const BLOCKLIST = SECTOR - 12;
/** Where diskboot loads the rest of core.img: GRUB_BOOT_I386_PC_KERNEL_SEG + one sector. */
const CORE_SEGMENT = 0x800 + (SECTOR >> 4);

/**
 * Patch GRUB's boot sector and core image for a core image stored contiguously from sector
 * `coreSector` (the BIOS boot partition), as grub-bios-setup does for an embedded core:
 * the boot sector learns where core.img starts, the boot drive comes from the BIOS, the
 * floppy drive check is disabled, and diskboot's blocklist names the remaining sectors.
 * Returns the new MBR (the given MBR's partition table and signature kept) and core image
 * (padded to whole sectors). Reed-Solomon redundancy is not added: it only repairs a
 * damaged core image.
 */
export function patchBiosBoot(input: { bootImg: Uint8Array; coreImg: Uint8Array; mbr: Uint8Array; coreSector: number; maxCoreBytes: number }): { mbr: Buffer; core: Buffer } {
  const { bootImg, coreImg, coreSector } = input;
  if (bootImg.length !== SECTOR) throw new GeminiError(`GRUB boot.img must be ${SECTOR} bytes, found ${bootImg.length}`, ExitCode.internal);
  if (input.mbr.length !== SECTOR) throw new GeminiError(`the MBR must be ${SECTOR} bytes, found ${input.mbr.length}`, ExitCode.internal);
  const sectors = Math.ceil(coreImg.length / SECTOR);
  if (sectors * SECTOR > input.maxCoreBytes) {
    throw new GeminiError(`GRUB core.img (${coreImg.length} bytes) does not fit the BIOS boot partition (${input.maxCoreBytes} bytes); embed fewer modules`, ExitCode.invalidInput);
  }
  const core = Buffer.alloc(sectors * SECTOR);
  core.set(coreImg);
  // Clear every blocklist entry (they grow downwards from the end of the first sector), then write one.
  for (let at = BLOCKLIST; at > 0 && core.readUInt16LE(at + 8) !== 0; at -= 12) core.fill(0, at, at + 12);
  core.writeBigUInt64LE(BigInt(coreSector + 1), BLOCKLIST);
  core.writeUInt16LE(sectors - 1, BLOCKLIST + 8);
  core.writeUInt16LE(CORE_SEGMENT, BLOCKLIST + 10);

  const mbr = Buffer.from(input.mbr);
  mbr.set(bootImg.subarray(0, MBR_CODE), 0);
  mbr.writeBigUInt64LE(BigInt(coreSector), KERNEL_SECTOR);
  mbr[BOOT_DRIVE] = 0xff;
  // Two NOPs over the jump that trusts the BIOS's drive number only for floppies.
  mbr[DRIVE_CHECK] = 0x90;
  mbr[DRIVE_CHECK + 1] = 0x90;
  return { mbr, core };
}
