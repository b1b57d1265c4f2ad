// A raw image file: byte N of the disk is byte N of the file. DISCARD punches holes and
// WRITE_ZEROES zeroes ranges with fallocate(), so a sparse file stays sparse.
import { openSync, closeSync, fstatSync, constants as fsc } from 'node:fs';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE } from '../native/index.js';
import type { Segment } from '../virtio/memory.js';
import { segmentsLength } from '../virtio/segments.js';
import type { BlockImage, Completion } from './image.js';
import { createFileIo, type FileIo, type IoEngineName } from './file-io.js';
import { ConfigError } from '../util/errors.js';
import { SECTOR_SIZE } from './protocol.js';

const EIO = 5;

export interface RawImageOptions {
  readonly readOnly: boolean;
  readonly ioEngine: IoEngineName;
}

export class RawImage implements BlockImage {
  readonly logicalBlockSize = SECTOR_SIZE;
  readonly optimalIoSize = 0;
  readonly canDiscard = true;
  readonly canWriteZeroes = true;
  private closed = false;

  private constructor(
    readonly path: string,
    private readonly fd: number,
    readonly size: number,
    readonly readOnly: boolean,
    private readonly io: FileIo,
  ) {}

  static open(path: string, opts: RawImageOptions): RawImage {
    let fd: number;
    try {
      fd = openSync(path, (opts.readOnly ? fsc.O_RDONLY : fsc.O_RDWR));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'error';
      throw new ConfigError(`cannot open image ${path}: ${code}`);
    }
    const st = fstatSync(fd);
    if (!st.isFile() && !st.isBlockDevice()) {
      closeSync(fd);
      throw new ConfigError(`image ${path} is not a regular file`);
    }
    // A trailing partial sector cannot be addressed by the guest; hide it.
    const size = Math.floor(st.size / SECTOR_SIZE) * SECTOR_SIZE;
    if (size === 0) {
      closeSync(fd);
      throw new ConfigError(`image ${path} is smaller than one sector`);
    }
    return new RawImage(path, fd, size, opts.readOnly, createFileIo(opts.ioEngine));
  }

  get ioEngine(): IoEngineName {
    return this.io.engine;
  }

  read(offset: number, segs: readonly Segment[], done: Completion): void {
    this.io.readv(this.fd, segs, offset, fullTransfer(segs, done));
  }

  write(offset: number, segs: readonly Segment[], done: Completion): void {
    this.io.writev(this.fd, segs, offset, fullTransfer(segs, done));
  }

  flush(done: Completion): void {
    this.io.fdatasync(this.fd, done);
  }

  discard(offset: number, length: number, done: Completion): void {
    this.io.fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length, done);
  }

  writeZeroes(offset: number, length: number, mayUnmap: boolean, done: Completion): void {
    const mode = mayUnmap ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE : FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
    this.io.fallocate(this.fd, mode, offset, length, done);
  }

  unplug(): void {
    this.io.unplug();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.io.close();
    closeSync(this.fd);
  }
}

/** A short transfer inside the image's bounds means the file shrank or the disk filled: an I/O error. */
function fullTransfer(segs: readonly Segment[], done: Completion): Completion {
  const expected = segmentsLength(segs);
  return (result) => done(result < 0 ? result : result === expected ? 0 : -EIO);
}
