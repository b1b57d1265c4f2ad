// FUSE messages a hostile guest can send: the fast-check arbitrary of the FUSE fuzz
// target and the argument builder that turns one into bytes the way a kernel would
// before the mutations. Shared by the fuzz target and the gateway test.
import fc from 'fast-check';
import { O_CREAT, O_EXCL, O_RDWR, Opcode } from '../../src/fuse/abi.js';
import { cstr, encode } from '../../src/fuse/requests.js';

export type Ref = { readonly k: 'root' } | { readonly k: 'known'; readonly i: number } | { readonly k: 'raw'; readonly v: bigint };

export interface FuseMessage {
  readonly opcode: number;
  readonly node: Ref;
  readonly fh: Ref;
  /** Small numbers for modes, flags, sizes (u32). */
  readonly nums: number[];
  /** Offsets, lengths, lock owners (u64). */
  readonly bigs: bigint[];
  readonly names: Uint8Array[];
  readonly data: Uint8Array;
  readonly trunc: number;
  readonly extra: Uint8Array;
  readonly lenSkew: number;
  readonly extLen: number;
  /** Byte positions where the message is cut into descriptors. */
  readonly cuts: number[];
  /** Reply room, cut into descriptors. */
  readonly room: number[];
  readonly queue: 0 | 1;
  readonly place: 'r0' | 'cross' | 'r2';
  readonly indirect: boolean;
}

export interface FuseInput {
  readonly messages: FuseMessage[];
}

export const OPCODES = Object.values(Opcode).filter((v): v is number => typeof v === 'number');

const te = new TextEncoder();
const NAMES: Uint8Array[] = [
  te.encode('a'), te.encode('file.txt'), te.encode('dir'), te.encode('sub dir'), te.encode('é'),
  te.encode('.'), te.encode('..'), te.encode('...'), te.encode('a/b'), te.encode('/'), te.encode('dir/'),
  new Uint8Array([0x78, 0, 0x79]), new Uint8Array(0), new Uint8Array([0xff, 0xfe]), new Uint8Array([0xc3]),
  te.encode('n'.repeat(255)), te.encode('n'.repeat(256)), te.encode('é'.repeat(128)),
];
const XATTR_NAMES: Uint8Array[] = [
  te.encode('user.a'), te.encode('user.b'), te.encode('security.x'), te.encode(''), te.encode(`user.${'x'.repeat(250)}`),
  te.encode(`user.${'x'.repeat(251)}`), new Uint8Array([0x75, 0xff]),
];

const refArb: fc.Arbitrary<Ref> = fc.oneof(
  { weight: 3, arbitrary: fc.constant({ k: 'root' } as const) },
  { weight: 5, arbitrary: fc.nat(15).map((i) => ({ k: 'known', i }) as const) },
  { weight: 1, arbitrary: fc.constantFrom(0n, 2n, 999n, 2n ** 53n, 2n ** 64n - 1n).map((v) => ({ k: 'raw', v }) as const) },
);

const numArb = fc.oneof(
  fc.constantFrom(0, 1, 2, 3, 0o644, 0o100644, 0o40755, 0o120777, 0o20644, O_RDWR | O_CREAT, O_RDWR | O_CREAT | O_EXCL, 0o1002, 0o2001, 4096, 65536, 0xffffffff),
  fc.nat(0xffff),
  fc.integer({ min: 0, max: 0xffffffff }),
);
const bigArb = fc.oneof(
  fc.constantFrom(0n, 1n, 100n, 4096n, 2n ** 31n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n),
  fc.bigInt({ min: 0n, max: 1n << 20n }),
  fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
);

const messageArb: fc.Arbitrary<FuseMessage> = fc.record({
  opcode: fc.oneof(
    { weight: 20, arbitrary: fc.constantFrom(...OPCODES) },
    { weight: 1, arbitrary: fc.constantFrom(0, 7, 19, 52, 53, 4096, 0xffffffff) },
  ),
  node: refArb,
  fh: refArb,
  nums: fc.array(numArb, { minLength: 6, maxLength: 6 }),
  bigs: fc.array(bigArb, { minLength: 4, maxLength: 4 }),
  names: fc.array(fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...NAMES) }, { weight: 1, arbitrary: fc.constantFrom(...XATTR_NAMES) }, { weight: 1, arbitrary: fc.uint8Array({ maxLength: 12 }) }), { minLength: 3, maxLength: 3 }),
  data: fc.oneof(fc.uint8Array({ maxLength: 64 }), fc.constantFrom(new Uint8Array(300).fill(7), new Uint8Array(0))),
  trunc: fc.oneof({ weight: 8, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 24 }) }),
  extra: fc.oneof({ weight: 8, arbitrary: fc.constant(new Uint8Array(0)) }, { weight: 1, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 24 }) }),
  lenSkew: fc.oneof({ weight: 10, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: -48, max: 48 }) }, { weight: 1, arbitrary: fc.constantFrom(-1e9, 0x7fffffff) }),
  extLen: fc.oneof({ weight: 10, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.constantFrom(8, 16, 64, 8 * 0xffff) }),
  cuts: fc.array(fc.nat(200), { maxLength: 3 }),
  room: fc.oneof(
    { weight: 6, arbitrary: fc.constant<number[]>([4096 + 256]) },
    { weight: 2, arbitrary: fc.array(fc.constantFrom(0, 1, 8, 15, 16, 17, 24, 100, 128, 144, 160, 300, 4096), { minLength: 1, maxLength: 3 }) },
  ),
  queue: fc.oneof({ weight: 6, arbitrary: fc.constant<0 | 1>(1) }, { weight: 1, arbitrary: fc.constant<0 | 1>(0) }),
  place: fc.constantFrom<FuseMessage['place']>('r0', 'cross', 'r2'),
  indirect: fc.boolean(),
});

export const fuseInputArb: fc.Arbitrary<FuseInput> = fc.record({ messages: fc.array(messageArb, { minLength: 1, maxLength: 8 }) });

/** The argument area of a message as the kernel would build it for `opcode` (before mutations). */
export function argsFor(m: FuseMessage, fh: number | bigint, node: (r: Ref) => number | bigint): Uint8Array[] {
  const [n0, n1, n2, n3] = m.nums as [number, number, number, number, number, number];
  const [b0, b1, b2] = m.bigs as [bigint, bigint, bigint, bigint];
  const [nameA, nameB, nameC] = m.names as [Uint8Array, Uint8Array, Uint8Array];
  const fhn = typeof fh === 'bigint' ? Number(BigInt.asUintN(53, fh)) : fh;
  const u53 = (b: bigint): number => Number(BigInt.asUintN(53, b));
  switch (m.opcode) {
    case Opcode.INIT:
      return [encode.init(n0 % 2 === 0 ? 7 : n0, 26 + (n1 % 16), n2, n3, 0)];
    case Opcode.LOOKUP:
    case Opcode.UNLINK:
    case Opcode.RMDIR:
      return [cstr(nameA)];
    case Opcode.FORGET:
      return [encode.forget(n0 % 4)];
    case Opcode.BATCH_FORGET: {
      const items = [{ nodeid: Number(node({ k: 'known', i: n1 % 16 })), nlookup: n0 % 3 }, { nodeid: u53(b0), nlookup: 1 }];
      return [encode.batchForget(items)];
    }
    case Opcode.GETATTR:
      return [encode.getattr(n0 & 1, fhn)];
    case Opcode.SETATTR:
      return [encode.setattr({ valid: n0, fh: fhn, size: u53(b0) % (1 << 20), mode: n1, uid: n2, gid: n3, atimeNs: b1, mtimeNs: BigInt.asIntN(64, b2) })];
    case Opcode.SYMLINK:
      return [cstr(nameA), cstr(nameB)];
    case Opcode.MKNOD:
      return [encode.mknod(n0, n1, n2 & 0o777), cstr(nameA)];
    case Opcode.MKDIR:
      return [encode.mkdir(n0, n1 & 0o777), cstr(nameA)];
    case Opcode.RENAME:
      return [encode.rename(Number(node(m.fh))), cstr(nameA), cstr(nameB)];
    case Opcode.RENAME2:
      return [encode.rename2(Number(node(m.fh)), n0 & 7), cstr(nameA), cstr(nameB)];
    case Opcode.LINK:
      return [encode.link(Number(node(m.fh))), cstr(nameA)];
    case Opcode.OPEN:
    case Opcode.OPENDIR:
      return [encode.open(n0)];
    case Opcode.READ:
    case Opcode.READDIR:
    case Opcode.READDIRPLUS:
      return [encode.read(fhn, b0 % 2n === 0n ? b0 % 8192n : b0, n1 % 3 === 0 ? n1 : n1 % 8192)];
    case Opcode.WRITE:
      return [encode.write(fhn, u53(b0) % 8192, m.data.length, n0 & 3), m.data];
    case Opcode.RELEASE:
    case Opcode.RELEASEDIR:
      return [encode.release(fhn, n0)];
    case Opcode.FSYNC:
    case Opcode.FSYNCDIR:
      return [encode.fsync(fhn, n0 & 1)];
    case Opcode.SETXATTR:
      return [encode.setxattr(m.data.length, n0 & 3), cstr(nameC), m.data];
    case Opcode.GETXATTR:
      return [encode.getxattr(n0 % 512), cstr(nameC)];
    case Opcode.LISTXATTR:
      return [encode.getxattr(n0 % 512)];
    case Opcode.REMOVEXATTR:
      return [cstr(nameC)];
    case Opcode.FLUSH:
      return [encode.flush(fhn)];
    case Opcode.GETLK:
    case Opcode.SETLK:
    case Opcode.SETLKW:
      return [encode.lk(fhn, b0, { start: b1, end: b2, type: n0 % 3, pid: n1 }, n2 & 1)];
    case Opcode.ACCESS:
      return [encode.access(n0 & 7)];
    case Opcode.CREATE:
      return [encode.create(n0, n1, n2 & 0o777), cstr(nameA)];
    case Opcode.INTERRUPT:
      return [encode.interrupt(b0 % 64n)];
    case Opcode.FALLOCATE:
      return [encode.fallocate(fhn, u53(b0) % 65536, u53(b1) % 65536, n0 % 3 === 0 ? 0 : n0)];
    case Opcode.LSEEK:
      return [encode.lseek(fhn, Number(BigInt.asIntN(32, b0)), n0 % 6)];
    case Opcode.SYNCFS:
      return [encode.syncfs()];
    case Opcode.READLINK:
    case Opcode.STATFS:
    case Opcode.DESTROY:
      return [];
    default:
      return [m.data];
  }
}
