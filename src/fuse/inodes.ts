// The engine's inode table: FUSE node ids ↔ paths of the path-based Vfs.
//
// - The root is node id 1 at path '' and is never dropped.
// - Every reply that hands the kernel an entry (LOOKUP, MKDIR, MKNOD, SYMLINK, CREATE,
//   each READDIRPLUS entry) counts one lookup; FORGET / BATCH_FORGET subtract; an inode
//   whose count reaches 0 is dropped.
// - Node ids are never reused within a table's life, and every inode carries the table's
//   generation (bumped by the server at every INIT), so nodeid:generation never repeats.
// - A path names at most one inode. Unlinking, or replacing by rename, detaches the old
//   inode (path null): the kernel may still hold it (open files) until it forgets it, but
//   path-based calls on it fail with ENOENT (a GETATTR of a directory still open answers
//   its last attributes). A lookup that finds a different kind of
//   object at a known path (a file replaced by a directory behind our back) detaches the
//   old inode and gives the new object a new node id, so the kernel never sees a node
//   change type.
// - Renaming re-keys the moved inode and, for a directory, every inode below it.
import type { FileAttr, FileKind } from './vfs.js';
import { FUSE_ROOT_ID } from './abi.js';

export interface Inode {
  readonly nodeid: number;
  readonly generation: number;
  /** Current path, or null once unlinked / replaced. */
  path: string | null;
  kind: FileKind;
  /** Lookups the kernel holds (not counted for the root). */
  lookups: number;
  /**
   * The attributes last handed to the kernel for it: what a directory removed or replaced
   * while open still reports.
   */
  attr: FileAttr | null;
}

/** `parent`/`name` as a Vfs path ('' is the root). */
export function joinPath(parent: string, name: string): string {
  return parent === '' ? name : `${parent}/${name}`;
}

/** The parent of a Vfs path ('' for top-level names and for the root). */
export function parentPath(path: string): string {
  const i = path.lastIndexOf('/');
  return i < 0 ? '' : path.slice(0, i);
}

export class InodeTable {
  private readonly byId = new Map<number, Inode>();
  private readonly byPath = new Map<string, Inode>();
  private nextId = FUSE_ROOT_ID + 1;
  readonly root: Inode;

  constructor(public generation = 0) {
    this.root = { nodeid: FUSE_ROOT_ID, generation, path: '', kind: 'dir', lookups: 1, attr: null };
    this.insert(this.root);
  }

  /** Inodes in the table (the root included). */
  get size(): number {
    return this.byId.size;
  }

  get(nodeid: number): Inode | undefined {
    return this.byId.get(nodeid);
  }

  /** The inode currently at `path`, without counting a lookup. */
  atPath(path: string): Inode | undefined {
    return this.byPath.get(path);
  }

  /** Finds or creates the inode for the object of kind `kind` at `path` and counts one lookup. */
  lookup(path: string, kind: FileKind): Inode {
    if (path === '') return this.root;
    let ino = this.byPath.get(path);
    if (ino !== undefined && ino.kind !== kind) {
      this.detachTree(path);
      ino = undefined;
    }
    if (ino === undefined) {
      ino = { nodeid: this.nextId++, generation: this.generation, path, kind, lookups: 0, attr: null };
      this.insert(ino);
    }
    ino.lookups++;
    return ino;
  }

  /** Subtracts `n` lookups; drops the inode at zero. Returns true if it was dropped. */
  forget(nodeid: number, n: number): boolean {
    if (nodeid === FUSE_ROOT_ID) return false;
    const ino = this.byId.get(nodeid);
    if (ino === undefined) return false;
    ino.lookups = n >= ino.lookups ? 0 : ino.lookups - n;
    if (ino.lookups > 0) return false;
    this.byId.delete(nodeid);
    if (ino.path !== null && this.byPath.get(ino.path) === ino) this.byPath.delete(ino.path);
    return true;
  }

  /** The object at `path` is gone (UNLINK, RMDIR): detach its inode and any below it. */
  unlink(path: string): void {
    this.detachTree(path);
  }

  /** The object at `from` now lives at `to` (replacing whatever was there). */
  rename(from: string, to: string): void {
    if (from === to || from === '') return;
    const moving = this.subtree(from);
    const replaced = this.subtree(to).filter((i) => !moving.includes(i));
    for (const ino of replaced) this.detach(ino);
    for (const ino of moving) this.byPath.delete(ino.path!);
    for (const ino of moving) {
      ino.path = to + ino.path!.slice(from.length);
      this.byPath.set(ino.path, ino);
    }
  }

  /** Drops everything but the root (DESTROY, a new INIT, a disconnect). */
  clear(generation = this.generation + 1): void {
    for (const ino of this.byId.values()) if (ino !== this.root) ino.path = null;
    this.byId.clear();
    this.byPath.clear();
    this.generation = generation;
    this.insert(this.root);
  }

  private insert(ino: Inode): void {
    this.byId.set(ino.nodeid, ino);
    if (ino.path !== null) this.byPath.set(ino.path, ino);
  }

  private detach(ino: Inode): void {
    if (ino === this.root || ino.path === null) return;
    if (this.byPath.get(ino.path) === ino) this.byPath.delete(ino.path);
    ino.path = null;
  }

  private detachTree(path: string): void {
    for (const ino of this.subtree(path)) this.detach(ino);
  }

  /**
   * The inode at `path` and, unless it is known to be a non-directory, every inode below
   * it. (A scan of the table: renames and removals of directories are rare next to
   * lookups, and the table holds only what the kernel caches.)
   */
  private subtree(path: string): Inode[] {
    const top = this.byPath.get(path);
    if (top !== undefined && top.kind !== 'dir') return [top];
    const out: Inode[] = [];
    if (top !== undefined) out.push(top);
    const prefix = path === '' ? '' : `${path}/`;
    for (const [p, ino] of this.byPath) if (p.startsWith(prefix) && ino !== top && p !== '') out.push(ino);
    return out;
  }
}
