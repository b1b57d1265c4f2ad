// struct virtio_blk_config as the guest reads it (little endian, virtio 1.x §5.2.4).
import { CONFIG_SIZE, SECTOR_SHIFT } from './protocol.js';

export interface BlkLimits {
  /** Largest single data segment, bytes (SIZE_MAX). */
  readonly sizeMax: number;
  /** Most data segments in one request (SEG_MAX). */
  readonly segMax: number;
  /** Largest request data, bytes: anything larger fails with IOERR. */
  readonly maxRequestBytes: number;
  readonly maxDiscardSectors: number;
  readonly maxDiscardSegments: number;
  readonly maxWriteZeroesSectors: number;
  readonly maxWriteZeroesSegments: number;
}

export const DEFAULT_LIMITS: BlkLimits = {
  sizeMax: 1 << 20,
  segMax: 254,
  maxRequestBytes: 32 << 20,
  maxDiscardSectors: (1 << 30) >> SECTOR_SHIFT,
  maxDiscardSegments: 16,
  maxWriteZeroesSectors: (1 << 30) >> SECTOR_SHIFT,
  maxWriteZeroesSegments: 16,
};

export interface BlkConfigInput {
  readonly capacitySectors: number;
  readonly logicalBlockSize: number;
  readonly optimalIoSize: number;
  readonly numQueues: number;
  readonly limits: BlkLimits;
}

export function encodeBlkConfig(c: BlkConfigInput): Uint8Array {
  const bytes = new Uint8Array(CONFIG_SIZE);
  const v = new DataView(bytes.buffer);
  v.setBigUint64(0, BigInt(c.capacitySectors), true);
  v.setUint32(8, c.limits.sizeMax, true);
  v.setUint32(12, c.limits.segMax, true);
  // geometry (16..19) stays zero: GEOMETRY is not offered.
  v.setUint32(20, c.logicalBlockSize, true);
  // topology: physical_block_exp, alignment_offset, min_io_size (in logical blocks), opt_io_size
  v.setUint8(24, 0);
  v.setUint8(25, 0);
  v.setUint16(26, 1, true);
  v.setUint32(28, Math.floor(c.optimalIoSize / c.logicalBlockSize), true);
  v.setUint8(32, 1); // writeback: the guest must FLUSH for durability
  v.setUint16(34, c.numQueues, true);
  v.setUint32(36, c.limits.maxDiscardSectors, true);
  v.setUint32(40, c.limits.maxDiscardSegments, true);
  v.setUint32(44, c.logicalBlockSize >> SECTOR_SHIFT, true); // discard_sector_alignment
  v.setUint32(48, c.limits.maxWriteZeroesSectors, true);
  v.setUint32(52, c.limits.maxWriteZeroesSegments, true);
  v.setUint8(56, 1); // write_zeroes_may_unmap
  return bytes;
}
