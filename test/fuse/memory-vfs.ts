// An in-memory Vfs for the engine's tests: a tree of nodes with Linux errnos. Open files
// hold their node, so an unlinked open file still reads and writes (as on Linux).
// `hooks.before(op, path)` runs (and is awaited) at the start of every call, so a test
// can slow a call down, hold it until it says so, or make it fail.
import { ErrnoError } from '../../src/util/errors.js';
import type {
  AttrChanges, Caller, CreateFlags, DirEntry, FileAttr, OpenFile, OpenFlags, StatFs, Vfs,
} from '../../src/fuse/vfs.js';

const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;

interface Meta {
  mode: number;
  uid: number;
  gid: number;
  atime: bigint;
  mtime: bigint;
  ctime: bigint;
  xattrs: Map<string, Uint8Array>;
}

interface FileNode { kind: 'file'; meta: Meta; data: Uint8Array; size: number }
interface DirNode { kind: 'dir'; meta: Meta; children: Map<string, Node> }
interface LinkNode { kind: 'symlink'; meta: Meta; target: string }
type Node = FileNode | DirNode | LinkNode;

function now(): bigint {
  return BigInt(Date.now()) * 1_000_000n;
}

function meta(type: number, mode: number, caller: Caller): Meta {
  const t = now();
  return { mode: type | (mode & 0o7777), uid: caller.uid, gid: caller.gid, atime: t, mtime: t, ctime: t, xattrs: new Map() };
}

function err(code: ConstructorParameters<typeof ErrnoError>[0]): never {
  throw new ErrnoError(code);
}

export type VfsOp =
  | 'stat' | 'list' | 'mkdir' | 'rmdir' | 'unlink' | 'rename' | 'symlink' | 'readlink' | 'setattr' | 'open' | 'create'
  | 'getxattr' | 'setxattr' | 'listxattr' | 'removexattr' | 'statfs' | 'sync' | 'close'
  | 'read' | 'write' | 'fileAttr' | 'fileSetattr' | 'flush' | 'fsync' | 'allocate' | 'release';

export interface MemoryVfsHooks {
  before?: (op: VfsOp, path: string) => void | Promise<void>;
}

const ROOT_CALLER: Caller = { uid: 0, gid: 0, pid: 0 };

export class MemoryVfs implements Vfs {
  readonly root: DirNode = { kind: 'dir', meta: meta(S_IFDIR, 0o755, ROOT_CALLER), children: new Map() };
  hooks: MemoryVfsHooks = {};
  readonly calls = new Map<VfsOp, number>();
  /** Files opened (open/create) and not yet released. */
  openFiles = 0;
  syncs = 0;
  flushes = 0;
  closes = 0;
  /** The flags of every create() call, in order. */
  readonly createFlags: CreateFlags[] = [];

  private async enter(op: VfsOp, path: string): Promise<void> {
    this.calls.set(op, (this.calls.get(op) ?? 0) + 1);
    await this.hooks.before?.(op, path);
  }

  // ---- tree helpers ---------------------------------------------------------------------

  private split(path: string): string[] {
    return path === '' ? [] : path.split('/');
  }

  /** The node at `path`; ENOENT / ENOTDIR along the way. */
  private node(path: string): Node {
    let n: Node = this.root;
    for (const seg of this.split(path)) {
      if (n.kind !== 'dir') err('ENOTDIR');
      const c = n.children.get(seg);
      if (c === undefined) err('ENOENT');
      n = c;
    }
    return n;
  }

  /** The parent directory of `path` and the last name. */
  private parent(path: string): { dir: DirNode; name: string } {
    const segs = this.split(path);
    const name = segs.pop();
    if (name === undefined) err('EBUSY'); // the root has no parent
    const d = this.node(segs.join('/'));
    if (d.kind !== 'dir') err('ENOTDIR');
    return { dir: d, name };
  }

  private attrOf(n: Node): FileAttr {
    const m = n.meta;
    const size = n.kind === 'file' ? n.size : n.kind === 'symlink' ? new TextEncoder().encode(n.target).length : 0;
    return { kind: n.kind, mode: m.mode, uid: m.uid, gid: m.gid, size, atime: m.atime, mtime: m.mtime, ctime: m.ctime };
  }

  private touch(d: DirNode): void {
    const t = now();
    d.meta.mtime = t;
    d.meta.ctime = t;
  }

  // ---- test helpers ------------------------------------------------------------------------

  /** Writes a file directly (creating parent directories). */
  put(path: string, data: Uint8Array | string, mode = 0o644): void {
    const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
    const segs = this.split(path);
    const name = segs.pop()!;
    let d = this.root;
    for (const s of segs) {
      let c = d.children.get(s);
      if (c === undefined) {
        c = { kind: 'dir', meta: meta(S_IFDIR, 0o755, ROOT_CALLER), children: new Map() };
        d.children.set(s, c);
      }
      if (c.kind !== 'dir') throw new Error(`${s} is not a directory`);
      d = c;
    }
    d.children.set(name, { kind: 'file', meta: meta(S_IFREG, mode, ROOT_CALLER), data: bytes.slice(), size: bytes.length });
  }

  /** A file's bytes, or null. */
  get(path: string): Uint8Array | null {
    try {
      const n = this.node(path);
      return n.kind === 'file' ? n.data.slice(0, n.size) : null;
    } catch {
      return null;
    }
  }

  /** Names in a directory (test view, no hooks). */
  names(path: string): string[] {
    const n = this.node(path);
    return n.kind === 'dir' ? [...n.children.keys()].sort() : [];
  }

  // ---- Vfs ---------------------------------------------------------------------------------

  async stat(path: string): Promise<FileAttr | null> {
    await this.enter('stat', path);
    try {
      return this.attrOf(this.node(path));
    } catch (e) {
      if (e instanceof ErrnoError && (e.code === 'ENOENT' || e.code === 'ENOTDIR')) return null;
      throw e;
    }
  }

  async list(path: string): Promise<DirEntry[]> {
    await this.enter('list', path);
    const n = this.node(path);
    if (n.kind !== 'dir') err('ENOTDIR');
    return [...n.children].map(([name, c]) => ({ name, attr: this.attrOf(c) }));
  }

  async mkdir(path: string, mode: number, caller: Caller): Promise<FileAttr> {
    await this.enter('mkdir', path);
    const { dir, name } = this.parent(path);
    if (dir.children.has(name)) err('EEXIST');
    const n: DirNode = { kind: 'dir', meta: meta(S_IFDIR, mode, caller), children: new Map() };
    dir.children.set(name, n);
    this.touch(dir);
    return this.attrOf(n);
  }

  async rmdir(path: string): Promise<void> {
    await this.enter('rmdir', path);
    const { dir, name } = this.parent(path);
    const n = dir.children.get(name);
    if (n === undefined) err('ENOENT');
    if (n.kind !== 'dir') err('ENOTDIR');
    if (n.children.size > 0) err('ENOTEMPTY');
    dir.children.delete(name);
    this.touch(dir);
  }

  async unlink(path: string): Promise<void> {
    await this.enter('unlink', path);
    const { dir, name } = this.parent(path);
    const n = dir.children.get(name);
    if (n === undefined) err('ENOENT');
    if (n.kind === 'dir') err('EISDIR');
    dir.children.delete(name);
    this.touch(dir);
  }

  async rename(from: string, to: string, noReplace: boolean): Promise<void> {
    await this.enter('rename', from);
    const src = this.parent(from);
    const n = src.dir.children.get(src.name);
    if (n === undefined) err('ENOENT');
    if (to.startsWith(`${from}/`)) err('EINVAL');
    const dst = this.parent(to);
    const old = dst.dir.children.get(dst.name);
    if (old !== undefined) {
      if (old === n) return;
      if (noReplace) err('EEXIST');
      if (n.kind === 'dir' && old.kind !== 'dir') err('ENOTDIR');
      if (n.kind !== 'dir' && old.kind === 'dir') err('EISDIR');
      if (old.kind === 'dir' && old.children.size > 0) err('ENOTEMPTY');
    }
    src.dir.children.delete(src.name);
    dst.dir.children.set(dst.name, n);
    n.meta.ctime = now();
    this.touch(src.dir);
    this.touch(dst.dir);
  }

  async symlink(path: string, target: string, caller: Caller): Promise<FileAttr> {
    await this.enter('symlink', path);
    const { dir, name } = this.parent(path);
    if (dir.children.has(name)) err('EEXIST');
    const n: LinkNode = { kind: 'symlink', meta: meta(S_IFLNK, 0o777, caller), target };
    dir.children.set(name, n);
    this.touch(dir);
    return this.attrOf(n);
  }

  async readlink(path: string): Promise<string> {
    await this.enter('readlink', path);
    const n = this.node(path);
    if (n.kind !== 'symlink') err('EINVAL');
    return n.target;
  }

  async setattr(path: string, c: AttrChanges): Promise<FileAttr> {
    await this.enter('setattr', path);
    return this.change(this.node(path), c);
  }

  private change(n: Node, c: AttrChanges): FileAttr {
    const m = n.meta;
    if (c.size !== undefined) {
      if (n.kind === 'dir') err('EISDIR');
      if (n.kind !== 'file') err('EINVAL');
      resize(n, c.size);
      m.mtime = now();
    }
    if (c.mode !== undefined) m.mode = (m.mode & ~0o7777) | (c.mode & 0o7777);
    if (c.uid !== undefined) m.uid = c.uid;
    if (c.gid !== undefined) m.gid = c.gid;
    if (c.atime !== undefined) m.atime = c.atime === 'now' ? now() : c.atime;
    if (c.mtime !== undefined) m.mtime = c.mtime === 'now' ? now() : c.mtime;
    m.ctime = c.ctime ?? now();
    return this.attrOf(n);
  }

  async open(path: string, flags: OpenFlags): Promise<OpenFile> {
    await this.enter('open', path);
    const n = this.node(path);
    if (n.kind === 'dir') err('EISDIR');
    if (n.kind !== 'file') err('ELOOP');
    if (flags.truncate) resize(n, 0);
    return this.fileFor(n, path);
  }

  async create(path: string, mode: number, caller: Caller, flags: CreateFlags): Promise<{ attr: FileAttr; file: OpenFile }> {
    await this.enter('create', path);
    this.createFlags.push(flags);
    const { dir, name } = this.parent(path);
    let n = dir.children.get(name);
    if (n !== undefined) {
      if (flags.exclusive) err('EEXIST');
      if (n.kind === 'dir') err('EISDIR');
      if (n.kind !== 'file') err('ELOOP');
      if (flags.truncate) resize(n, 0);
    } else {
      n = { kind: 'file', meta: meta(S_IFREG, mode, caller), data: new Uint8Array(0), size: 0 };
      dir.children.set(name, n);
      this.touch(dir);
    }
    return { attr: this.attrOf(n), file: this.fileFor(n, path) };
  }

  private fileFor(n: FileNode, path: string): OpenFile {
    this.openFiles++;
    let released = false;
    const check = (): void => {
      if (released) throw new Error('use of a released OpenFile');
    };
    return {
      read: async (offset, length) => {
        await this.enter('read', path);
        check();
        if (offset >= n.size) return new Uint8Array(0);
        return n.data.slice(offset, Math.min(n.size, offset + length));
      },
      write: async (offset, data) => {
        await this.enter('write', path);
        check();
        if (offset + data.length > n.size) resize(n, offset + data.length);
        n.data.set(data, offset);
        n.meta.mtime = now();
        return data.length;
      },
      attr: async () => {
        await this.enter('fileAttr', path);
        return this.attrOf(n);
      },
      flush: async () => {
        await this.enter('flush', path);
        this.flushes++;
      },
      fsync: async () => {
        await this.enter('fsync', path);
      },
      allocate: async (offset, length) => {
        await this.enter('allocate', path);
        if (offset + length > n.size) resize(n, offset + length);
      },
      setattr: async (c) => {
        await this.enter('fileSetattr', path);
        check();
        return this.change(n, c);
      },
      release: async () => {
        await this.enter('release', path);
        check();
        released = true;
        this.openFiles--;
      },
    };
  }

  async getxattr(path: string, name: string): Promise<Uint8Array> {
    await this.enter('getxattr', path);
    const v = this.node(path).meta.xattrs.get(name);
    if (v === undefined) err('ENODATA');
    return v.slice();
  }

  async setxattr(path: string, name: string, value: Uint8Array, flags: { create: boolean; replace: boolean }): Promise<void> {
    await this.enter('setxattr', path);
    const x = this.node(path).meta.xattrs;
    if (flags.create && x.has(name)) err('EEXIST');
    if (flags.replace && !x.has(name)) err('ENODATA');
    x.set(name, value.slice());
  }

  async listxattr(path: string): Promise<string[]> {
    await this.enter('listxattr', path);
    return [...this.node(path).meta.xattrs.keys()];
  }

  async removexattr(path: string, name: string): Promise<void> {
    await this.enter('removexattr', path);
    if (!this.node(path).meta.xattrs.delete(name)) err('ENODATA');
  }

  async statfs(): Promise<StatFs> {
    await this.enter('statfs', '');
    return { blockSize: 4096, blocks: 1 << 20, blocksFree: 1 << 19, files: 1 << 20, filesFree: 1 << 19, nameMax: 255 };
  }

  async sync(): Promise<void> {
    await this.enter('sync', '');
    this.syncs++;
  }

  async close(): Promise<void> {
    await this.enter('close', '');
    this.closes++;
  }
}

function resize(n: FileNode, size: number): void {
  if (size > n.data.length) {
    const d = new Uint8Array(Math.max(size, n.data.length * 2));
    d.set(n.data.subarray(0, n.size));
    n.data = d;
  } else if (size < n.size) {
    n.data.fill(0, size, n.size);
  }
  n.size = size;
}
