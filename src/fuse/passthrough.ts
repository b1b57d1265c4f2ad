// FUSE passthrough (Linux 6.9+, /dev/fuse only): the kernel serves an open file's reads
// from a backing file we hand it, without a round trip through this process per read.
// The Vfs offers the backing (OpenFile.backingFile: for the bucket, a memfd copy of an
// object whose bytes are all in the page cache); this module decides which opens may
// use one and keeps the connection's backing ids.
//
// The kernel's rules (fs/fuse/iomode.c) shape the policy:
//   - while one handle of an inode is in passthrough mode, every other open of the inode
//     must be a passthrough open of the same backing file, or it fails with EIO;
//   - a passthrough open fails (EIO) while the inode is open in the kernel's caching mode.
// So a backing is set up only for a read-only open of an inode with no other open handle;
// while it is in use, further read-only opens share it, and what would change the file
// (an open for writing, a truncate by path) fails with ETXTBSY, as for a running binary:
// the copy would not see those changes, and the kernel allows no other kind of open.
import { closeSync } from 'node:fs';
import type { Logger } from '../util/log.js';
import type { Inode } from './inodes.js';

/** The connection's backing-file registry (the /dev/fuse ioctls). */
export interface BackingDevice {
  /** Registers `fd` (the caller still closes it) and returns its backing id. */
  open(fd: number): number;
  close(id: number): void;
}

/** One registered backing file, shared by the passthrough handles of one inode. */
export interface Backing {
  readonly id: number;
  readonly bytes: number;
  handles: number;
}

/** Where a backing file comes from: the open file's offer (OpenFile.backingFile). */
export type BackingSource = (maxBytes: number) => Promise<{ fd: number; bytes: number } | null>;

export interface PassthroughOptions {
  readonly device: BackingDevice;
  /** Bytes the backing files in use may hold in all (memfd copies are memory). */
  readonly maxBytes: number;
  readonly log: Logger;
}

export class Passthrough {
  private readonly byInode = new Map<Inode, Backing>();
  /** Backings being made (the copy takes a while): later opens of the inode wait for them. */
  private readonly making = new Map<Inode, Promise<Backing | null>>();
  private bytes = 0;
  private failed = false;
  /** Counters for metrics and tests. */
  readonly stats = { backings: 0, refused: 0 };

  constructor(private readonly o: PassthroughOptions) {}

  /** Whether `inode` is open in passthrough mode, so that a change to it must fail with ETXTBSY (counted). */
  refusesChange(inode: Inode): boolean {
    if (!this.byInode.has(inode)) return false;
    this.stats.refused++;
    return true;
  }

  /**
   * The backing a read-only open of `inode` gets: the one in use (shared), a new one from
   * `source` when no other handle has the inode open (`otherHandles`, asked again once the
   * copy is made: an open for writing may have come meanwhile), or null (served the
   * ordinary way). Opens that come while a backing is being made wait for it and share it.
   */
  async acquire(inode: Inode, otherHandles: () => boolean, source: BackingSource | undefined): Promise<Backing | null> {
    const making = this.making.get(inode);
    if (making !== undefined) await making;
    const shared = this.byInode.get(inode);
    if (shared !== undefined) {
      shared.handles++;
      return shared;
    }
    if (making !== undefined || otherHandles() || source === undefined || this.failed) return null;
    const made = this.make(inode, otherHandles, source);
    this.making.set(inode, made);
    try {
      return await made;
    } finally {
      this.making.delete(inode);
    }
  }

  private async make(inode: Inode, otherHandles: () => boolean, source: BackingSource): Promise<Backing | null> {
    let got: { fd: number; bytes: number } | null;
    try {
      got = await source(this.o.maxBytes - this.bytes);
    } catch (err) {
      this.o.log.warn('could not make a FUSE passthrough backing file', { error: err });
      return null;
    }
    if (got === null) return null;
    try {
      if (otherHandles() || got.bytes > this.o.maxBytes - this.bytes) return null;
      let id: number;
      try {
        id = this.o.device.open(got.fd);
      } catch (err) {
        // EPERM and the like hold for the whole connection: stop asking.
        this.failed = true;
        this.o.log.warn('FUSE passthrough unavailable; serving reads the ordinary way', { error: err });
        return null;
      }
      const b: Backing = { id, bytes: got.bytes, handles: 1 };
      this.byInode.set(inode, b);
      this.bytes += b.bytes;
      this.stats.backings++;
      return b;
    } finally {
      closeSync(got.fd);
    }
  }

  /** A passthrough handle is gone (RELEASE, or an undone OPEN); the last one closes the backing. */
  release(inode: Inode, b: Backing): void {
    if (--b.handles > 0 || this.byInode.get(inode) !== b) return;
    this.byInode.delete(inode);
    this.bytes -= b.bytes;
    try {
      this.o.device.close(b.id);
    } catch (err) {
      // After an unmount the connection is gone, and its backings with it.
      this.o.log.debug('closing a FUSE passthrough backing failed', { error: err });
    }
  }

  /** Bytes the backing files in use hold. */
  get heldBytes(): number {
    return this.bytes;
  }
}
