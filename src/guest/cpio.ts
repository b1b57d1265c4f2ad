// Minimal writer for the "newc" cpio format (the one the Linux initramfs
// unpacker reads). Written in TypeScript so that building an initramfs needs
// neither root (device nodes) nor the cpio tool, and so that the output does
// not depend on the host's umask or file ownership.

export type CpioEntry =
  | { type: 'dir'; path: string; mode?: number }
  | { type: 'file'; path: string; data: Buffer | string; mode?: number }
  | { type: 'symlink'; path: string; target: string }
  | { type: 'char'; path: string; major: number; minor: number; mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

function hex8(n: number): string {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new RangeError(`cpio field out of range: ${n}`);
  return n.toString(16).padStart(8, '0');
}

function pad4(len: number): Buffer {
  return Buffer.alloc((4 - (len % 4)) % 4);
}

function header(ino: number, mode: number, nlink: number, size: number, rdevMajor: number, rdevMinor: number, name: string): Buffer {
  const nameBuf = Buffer.from(name + '\0', 'utf8');
  const fields = [
    ino, mode, 0 /* uid */, 0 /* gid */, nlink, 0 /* mtime: reproducible */, size,
    0 /* devmajor */, 0 /* devminor */, rdevMajor, rdevMinor, nameBuf.length, 0 /* check */,
  ];
  const h = Buffer.from('070701' + fields.map(hex8).join(''), 'ascii');
  return Buffer.concat([h, nameBuf, pad4(h.length + nameBuf.length)]);
}

/** Normalises "/a/b" or "a/b" to "a/b" (cpio names are relative). */
function relName(p: string): string {
  const n = p.replace(/^\/+/, '').replace(/\/+$/, '');
  if (n === '' || n.split('/').some((s) => s === '' || s === '.' || s === '..')) {
    throw new Error(`bad cpio path: ${JSON.stringify(p)}`);
  }
  return n;
}

/**
 * Serialises entries into one newc archive (with trailer). Parent directories
 * that are not listed are added automatically, before their children.
 */
export function buildCpio(entries: readonly CpioEntry[]): Buffer {
  const out: Buffer[] = [];
  const seenDirs = new Set<string>();
  let ino = 1;
  const dir = (name: string, mode = 0o755): void => {
    if (seenDirs.has(name)) return;
    const parent = name.includes('/') ? name.slice(0, name.lastIndexOf('/')) : '';
    if (parent) dir(parent);
    seenDirs.add(name);
    out.push(header(ino++, S_IFDIR | mode, 2, 0, 0, 0, name));
  };
  const parentOf = (name: string): void => {
    const i = name.lastIndexOf('/');
    if (i > 0) dir(name.slice(0, i));
  };
  for (const e of entries) {
    const name = relName(e.path);
    switch (e.type) {
      case 'dir':
        dir(name, e.mode ?? 0o755);
        break;
      case 'file': {
        parentOf(name);
        const data = typeof e.data === 'string' ? Buffer.from(e.data, 'utf8') : e.data;
        out.push(header(ino++, S_IFREG | (e.mode ?? 0o644), 1, data.length, 0, 0, name), data, pad4(data.length));
        break;
      }
      case 'symlink': {
        parentOf(name);
        const data = Buffer.from(e.target, 'utf8');
        out.push(header(ino++, S_IFLNK | 0o777, 1, data.length, 0, 0, name), data, pad4(data.length));
        break;
      }
      case 'char':
        parentOf(name);
        out.push(header(ino++, S_IFCHR | (e.mode ?? 0o600), 1, 0, e.major, e.minor, name));
        break;
    }
  }
  out.push(header(0, 0, 1, 0, 0, 0, 'TRAILER!!!'));
  return Buffer.concat(out);
}
