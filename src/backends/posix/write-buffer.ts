// The local copy of a file open for writing: the bytes written (and the bytes of the
// stored object fetched under them when needed), in memory up to a per-file threshold and
// within a global budget, in a temporary file beyond.
//
// A WriteBuffer describes the new content of the file as
//   - `extents`: ranges whose bytes are held locally (written, or fetched from the stored
//     object);
//   - everything else in [0, baseLimit): still the stored object's bytes at the same offset
//     (fetched lazily: by a read that needs them, or before the upload);
//   - everything else in [baseLimit, size): zeros (a file extended past its old end, or
//     truncated and extended again).
// Invariant: local bytes outside `extents` are zero, so once the gaps below baseLimit are
// filled the local copy is the whole file.
//
// Memory: an in-memory buffer is one contiguous array that grows by doubling; its
// capacity is reserved from a MemoryBudget shared by every open file. A buffer that would
// grow past `spillThreshold`, or past what the budget has left, moves to a temporary file
// (created in `tempDir` and unlinked at once, so nothing is left behind by a crash; sparse,
// so holes cost nothing) and gives its memory back.
import { randomBytes } from 'node:crypto';
import { open, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';

/** Sorted, disjoint, non-adjacent half-open ranges [start, end). */
export class ExtentSet {
  private starts: number[] = [];
  private ends: number[] = [];

  get count(): number {
    return this.starts.length;
  }

  /** Total bytes covered. */
  get bytes(): number {
    let n = 0;
    for (let i = 0; i < this.starts.length; i++) n += this.ends[i]! - this.starts[i]!;
    return n;
  }

  /** End of the last range (0 when empty). */
  get end(): number {
    return this.ends.length === 0 ? 0 : this.ends[this.ends.length - 1]!;
  }

  ranges(): Array<[number, number]> {
    return this.starts.map((s, i) => [s, this.ends[i]!]);
  }

  /** Index of the first range whose end is >= pos. */
  private firstEndingAtOrAfter(pos: number): number {
    let lo = 0;
    let hi = this.ends.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ends[mid]! < pos) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  add(start: number, end: number): void {
    if (end <= start) return;
    const i = this.firstEndingAtOrAfter(start);
    let j = i;
    let s = start;
    let e = end;
    while (j < this.starts.length && this.starts[j]! <= end) {
      s = Math.min(s, this.starts[j]!);
      e = Math.max(e, this.ends[j]!);
      j++;
    }
    this.starts.splice(i, j - i, s);
    this.ends.splice(i, j - i, e);
  }

  /** Drops everything at or past `size`. */
  truncate(size: number): void {
    const i = this.firstEndingAtOrAfter(size);
    if (i < this.starts.length && this.starts[i]! < size) {
      this.ends[i] = size;
      this.starts.length = i + 1;
      this.ends.length = i + 1;
    } else {
      this.starts.length = i;
      this.ends.length = i;
    }
  }

  /** True when [start, end) is covered entirely. */
  covers(start: number, end: number): boolean {
    if (end <= start) return true;
    const i = this.firstEndingAtOrAfter(start + 1);
    return i < this.starts.length && this.starts[i]! <= start && this.ends[i]! >= end;
  }

  /** The parts of [start, end) that are not covered, in order. */
  gaps(start: number, end: number): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    let pos = start;
    for (let i = this.firstEndingAtOrAfter(start + 1); i < this.starts.length && pos < end; i++) {
      const s = this.starts[i]!;
      if (s >= end) break;
      if (s > pos) out.push([pos, s]);
      pos = Math.max(pos, this.ends[i]!);
    }
    if (pos < end) out.push([pos, end]);
    return out;
  }

  /** The covered parts of [start, end), in order. */
  present(start: number, end: number): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    for (let i = this.firstEndingAtOrAfter(start + 1); i < this.starts.length; i++) {
      const s = Math.max(start, this.starts[i]!);
      const e = Math.min(end, this.ends[i]!);
      if (s >= end) break;
      if (e > s) out.push([s, e]);
    }
    return out;
  }
}

/** Bytes of in-memory write buffers allowed across all open files. */
export class MemoryBudget {
  private usedBytes = 0;
  private peakBytes = 0;
  constructor(readonly limit: number) {}

  get used(): number {
    return this.usedBytes;
  }
  /** Highest `used` seen (tests, metrics). */
  get peak(): number {
    return this.peakBytes;
  }

  tryReserve(bytes: number): boolean {
    if (this.usedBytes + bytes > this.limit) return false;
    this.usedBytes += bytes;
    this.peakBytes = Math.max(this.peakBytes, this.usedBytes);
    return true;
  }

  release(bytes: number): void {
    this.usedBytes = Math.max(0, this.usedBytes - bytes);
  }
}

export interface WriteBufferOptions {
  readonly budget: MemoryBudget;
  /** Largest in-memory buffer of one file; beyond it the file spills to a temporary file. */
  readonly spillThreshold: number;
  readonly tempDir: string;
}

/**
 * A memory buffer's first allocation holds the first write's end rounded up to FIRST_ROUND:
 * most files are written whole at once, small ones in one write (a 64 KiB buffer for a
 * 4 KiB file cost ~10 µs of zeroing and allocation per create). Growing from there, the
 * capacity at least doubles and is at least MIN_CAPACITY.
 */
const FIRST_ROUND = 4096;
const MIN_CAPACITY = 64 * 1024;

export class WriteBuffer {
  /** The file's size. */
  size: number;
  /** Bytes of the stored object below this offset are part of the file (where not in `extents`). */
  baseLimit: number;
  readonly extents = new ExtentSet();
  private mem: Uint8Array | null = new Uint8Array(0);
  private fh: FileHandle | null = null;
  /** A spill in progress: writers wait for it (they would write to memory already copied). */
  private spilling: Promise<void> | null = null;
  private closed = false;

  /** A buffer over a stored object of `baseSize` bytes (0 for a new or truncated file). */
  constructor(private readonly o: WriteBufferOptions, baseSize: number) {
    this.size = baseSize;
    this.baseLimit = baseSize;
  }

  get spilled(): boolean {
    return this.fh !== null;
  }

  /** Bytes of memory this buffer holds from the budget. */
  get memoryBytes(): number {
    return this.mem?.length ?? 0;
  }

  /** The ranges that still come from the stored object. */
  baseGaps(start = 0, end = this.size): Array<[number, number]> {
    return this.extents.gaps(start, Math.min(end, this.baseLimit));
  }

  /** True when the local copy holds the whole file. */
  get complete(): boolean {
    return this.baseGaps().length === 0;
  }

  /** Writes `data` at `offset` (extends the file when past its end). */
  async write(offset: number, data: Uint8Array): Promise<void> {
    if (data.length === 0) return;
    await this.put(offset, data);
    this.extents.add(offset, offset + data.length);
    if (offset + data.length > this.size) this.size = offset + data.length;
  }

  /** Stores fetched bytes of the stored object at `offset`, only where nothing local is there yet. */
  async fill(offset: number, data: Uint8Array): Promise<void> {
    for (const [s, e] of this.extents.gaps(offset, Math.min(offset + data.length, this.baseLimit))) {
      await this.put(s, data.subarray(s - offset, e - offset));
      this.extents.add(s, e);
    }
  }

  /** Truncates or extends (with zeros). */
  async truncate(size: number): Promise<void> {
    while (this.spilling) await this.spilling;
    if (size < this.size) {
      this.extents.truncate(size);
      this.baseLimit = Math.min(this.baseLimit, size);
      if (this.fh) await this.fh.truncate(size);
      else if (this.mem && this.mem.length > size) this.mem.fill(0, size);
    }
    this.size = size;
  }

  /** Copies local bytes at [offset, offset+target.length) into `target` (zeros where nothing is held). */
  async readLocal(offset: number, target: Uint8Array): Promise<void> {
    if (target.length === 0) return;
    const fh = this.fh;
    if (fh) {
      let done = 0;
      while (done < target.length) {
        const { bytesRead } = await fh.read(target, done, target.length - done, offset + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      target.fill(0, done);
      return;
    }
    const mem = this.mem ?? new Uint8Array(0);
    const avail = Math.max(0, Math.min(target.length, mem.length - offset));
    if (avail > 0) target.set(mem.subarray(offset, offset + avail));
    target.fill(0, avail);
  }

  /** True when `contents()` returns the memory buffer itself (no new allocation). */
  get inMemory(): boolean {
    return this.mem !== null && this.mem.length >= this.size;
  }

  /**
   * The whole file as one array for a single PUT (call when `complete`): the memory buffer
   * itself when it holds the file (not a copy: the caller keeps writers out meanwhile),
   * else a fresh array.
   */
  async contents(): Promise<Uint8Array> {
    if (this.mem && this.mem.length >= this.size) return this.mem.subarray(0, this.size);
    const out = new Uint8Array(this.size);
    await this.readLocal(0, out);
    return out;
  }

  /** Moves the bytes to a temporary file and gives the memory back (concurrent callers share one spill). */
  async spill(): Promise<void> {
    if (this.fh || this.closed) return;
    this.spilling ??= this.moveToFile().finally(() => (this.spilling = null));
    await this.spilling;
  }

  private async moveToFile(): Promise<void> {
    const path = join(this.o.tempDir, `vhost-s3-wb-${process.pid}-${randomBytes(8).toString('hex')}`);
    const fh = await open(path, 'w+', 0o600);
    try {
      await unlink(path);
      const mem = this.mem ?? new Uint8Array(0);
      for (const [s, e] of this.extents.present(0, Math.min(mem.length, this.size))) await writeAll(fh, mem.subarray(s, e), s);
    } catch (err) {
      await fh.close().catch(() => undefined);
      throw err;
    }
    if (this.closed) {
      await fh.close().catch(() => undefined);
      return;
    }
    this.fh = fh;
    this.o.budget.release(this.memoryBytes);
    this.mem = null;
  }

  /** Frees memory and the temporary file. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    while (this.spilling) await this.spilling.catch(() => undefined);
    this.o.budget.release(this.memoryBytes);
    this.mem = null;
    const fh = this.fh;
    this.fh = null;
    if (fh) await fh.close().catch(() => undefined);
  }

  private async put(offset: number, data: Uint8Array): Promise<void> {
    while (this.spilling) await this.spilling;
    if (this.closed) throw new Error('write buffer closed');
    const end = offset + data.length;
    if (!this.fh) {
      if (this.grow(end)) {
        this.mem!.set(data, offset);
        return;
      }
      await this.spill();
    }
    await writeAll(this.fh!, data, offset);
  }

  /** Makes the memory buffer at least `end` bytes; false when it must spill instead. */
  private grow(end: number): boolean {
    const mem = this.mem!;
    if (end <= mem.length) return true;
    if (end > this.o.spillThreshold) return false;
    const capacity = Math.min(this.o.spillThreshold, mem.length === 0 ? Math.ceil(end / FIRST_ROUND) * FIRST_ROUND : Math.max(end, MIN_CAPACITY, mem.length * 2));
    let want = capacity;
    if (!this.o.budget.tryReserve(want - mem.length)) {
      want = end;
      if (!this.o.budget.tryReserve(want - mem.length)) return false;
    }
    const next = new Uint8Array(want);
    next.set(mem);
    this.mem = next;
    return true;
  }
}

async function writeAll(fh: FileHandle, data: Uint8Array, offset: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, offset + done);
    done += bytesWritten;
  }
}
