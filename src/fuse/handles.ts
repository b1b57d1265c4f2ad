// File and directory handles (the fh of OPEN/CREATE/OPENDIR replies). Handle numbers are
// never reused within a table's life, so a stale fh from the peer finds nothing (EBADF)
// instead of someone else's file.
import type { FileAttr, FileKind, OpenFile } from './vfs.js';
import type { Inode } from './inodes.js';
import type { Backing } from './passthrough.js';

export interface FileHandle {
  readonly kind: 'file';
  readonly inode: Inode;
  readonly file: OpenFile;
  readonly readable: boolean;
  readonly writable: boolean;
  /** O_APPEND: every write goes to the end of file, one at a time. */
  readonly append: boolean;
  /** Tail of the chain that serializes O_APPEND writes on this handle. */
  appendTail: Promise<unknown>;
  /** The passthrough backing the kernel reads this handle from (src/fuse/passthrough.ts), or null. */
  readonly backing: Backing | null;
}

/** One entry of a directory snapshot. */
export interface DirSnapshotEntry {
  readonly name: string;
  /** UTF-8 bytes of the name (what the dirent carries). */
  readonly bytes: Uint8Array;
  readonly kind: FileKind;
  /** null for '.' and '..'. */
  readonly attr: FileAttr | null;
}

export interface DirHandle {
  readonly kind: 'dir';
  readonly inode: Inode;
  /**
   * The listing taken at OPENDIR ('.' and '..' first). Entry i has directory offset i + 1,
   * so offsets handed out stay valid across pages whatever changes meanwhile; a READDIR
   * at offset 0 after the first page (rewinddir) takes a fresh snapshot.
   */
  entries: DirSnapshotEntry[];
  /** Something was returned from this snapshot. */
  consumed: boolean;
}

export type Handle = FileHandle | DirHandle;

export class HandleTable {
  private readonly handles = new Map<number, Handle>();
  /** The open file handles of each inode (requests that come without a handle find one here). */
  private readonly filesOf = new Map<Inode, Set<FileHandle>>();
  private next = 1;

  get size(): number {
    return this.handles.size;
  }

  add(h: Handle): number {
    const fh = this.next++;
    this.handles.set(fh, h);
    if (h.kind === 'file') {
      let set = this.filesOf.get(h.inode);
      if (set === undefined) this.filesOf.set(h.inode, (set = new Set()));
      set.add(h);
    }
    return fh;
  }

  /** Some open file handle of `inode`, if any (each reaches the same file). */
  anyFileOf(inode: Inode): FileHandle | undefined {
    const set = this.filesOf.get(inode);
    return set === undefined ? undefined : set.values().next().value;
  }

  /** Whether `inode` is open as a directory (a scan: only asked for removed directories). */
  hasDirOf(inode: Inode): boolean {
    for (const h of this.handles.values()) if (h.kind === 'dir' && h.inode === inode) return true;
    return false;
  }

  file(fh: number): FileHandle | undefined {
    const h = this.handles.get(fh);
    return h?.kind === 'file' ? h : undefined;
  }

  dir(fh: number): DirHandle | undefined {
    const h = this.handles.get(fh);
    return h?.kind === 'dir' ? h : undefined;
  }

  /** Removes and returns the handle if it is of the given kind. */
  take<K extends Handle['kind']>(fh: number, kind: K): Extract<Handle, { kind: K }> | undefined {
    const h = this.handles.get(fh);
    if (h === undefined || h.kind !== kind) return undefined;
    this.handles.delete(fh);
    if (h.kind === 'file') {
      const set = this.filesOf.get(h.inode);
      set?.delete(h);
      if (set?.size === 0) this.filesOf.delete(h.inode);
    }
    return h as Extract<Handle, { kind: K }>;
  }

  /** Removes every handle and returns the open files among them. */
  drain(): FileHandle[] {
    const files: FileHandle[] = [];
    for (const h of this.handles.values()) if (h.kind === 'file') files.push(h);
    this.handles.clear();
    this.filesOf.clear();
    return files;
  }
}
