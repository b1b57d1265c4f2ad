// A Vfs that refuses every change with EROFS (--readonly): the guest may mount the share
// read-write, so the refusal must come from the server, not from mount options.
import { ErrnoError } from '../util/errors.js';
import type { Segment } from '../virtio/memory.js';
import type { AttrChanges, Caller, DirEntry, FileAttr, OpenFile, OpenFlags, StatFs, Vfs } from './vfs.js';

const refuse = (): never => {
  throw new ErrnoError('EROFS');
};

export class ReadOnlyVfs implements Vfs {
  constructor(private readonly inner: Vfs) {}
  stat(path: string): Promise<FileAttr | null> {
    return this.inner.stat(path);
  }
  statNow(path: string): FileAttr | null | undefined {
    return this.inner.statNow?.(path);
  }
  list(path: string): Promise<DirEntry[]> {
    return this.inner.list(path);
  }
  readlink(path: string): Promise<string> {
    return this.inner.readlink(path);
  }
  getxattr(path: string, name: string): Promise<Uint8Array> {
    return this.inner.getxattr(path, name);
  }
  listxattr(path: string): Promise<string[]> {
    return this.inner.listxattr(path);
  }
  statfs(): Promise<StatFs> {
    return this.inner.statfs();
  }
  sync(): Promise<void> {
    return this.inner.sync();
  }
  invalidate(path: string): void {
    this.inner.invalidate?.(path);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
  async open(path: string, flags: OpenFlags): Promise<OpenFile> {
    if (flags.write || flags.truncate || flags.append) refuse();
    return new ReadOnlyFile(await this.inner.open(path, flags));
  }
  async mkdir(_p: string, _m: number, _c: Caller): Promise<FileAttr> {
    return refuse();
  }
  async rmdir(): Promise<void> {
    refuse();
  }
  async unlink(): Promise<void> {
    refuse();
  }
  async rename(): Promise<void> {
    refuse();
  }
  async symlink(): Promise<FileAttr> {
    return refuse();
  }
  async setattr(_p: string, _c: AttrChanges): Promise<FileAttr> {
    return refuse();
  }
  async create(): Promise<{ attr: FileAttr; file: OpenFile }> {
    return refuse();
  }
  async setxattr(): Promise<void> {
    refuse();
  }
  async removexattr(): Promise<void> {
    refuse();
  }
}

/**
 * An open file whose attributes cannot be changed either (fchmod of a read-only fd is
 * allowed by the kernel). The inner file's fast read paths and passthrough backing are
 * passed on: a read-only share reads as fast as a writable one.
 */
class ReadOnlyFile implements OpenFile {
  constructor(private readonly inner: OpenFile) {}
  read(offset: number, length: number): Promise<Uint8Array> {
    return this.inner.read(offset, length);
  }
  readInto(offset: number, length: number, targets: readonly Uint8Array[]): number | null {
    return this.inner.readInto?.(offset, length, targets) ?? null;
  }
  readNow(offset: number, length: number): Uint8Array | null {
    return this.inner.readNow?.(offset, length) ?? null;
  }
  readIntoAsync(offset: number, length: number, targets: readonly Segment[], done: (result: number) => void): boolean {
    return this.inner.readIntoAsync?.(offset, length, targets, done) ?? false;
  }
  async backingFile(maxBytes: number): Promise<{ fd: number; bytes: number } | null> {
    return (await this.inner.backingFile?.(maxBytes)) ?? null;
  }
  attr(): Promise<FileAttr> {
    return this.inner.attr();
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  fsync(datasync: boolean): Promise<void> {
    return this.inner.fsync(datasync);
  }
  release(): Promise<void> {
    return this.inner.release();
  }
  async write(): Promise<number> {
    return refuse();
  }
  async allocate(): Promise<void> {
    refuse();
  }
  async setattr(_c: AttrChanges): Promise<FileAttr> {
    return refuse();
  }
}
