// The /dev/fuse transport: mounts the FUSE engine on a host directory (vhost-s3 mount).
// The kernel hands out one request per read(2) and takes one reply per writev(2); the
// same FuseServer serves virtio-fs, so both paths run the same engine.
//
// Mounting uses mount(2) directly and therefore needs root (CAP_SYS_ADMIN). The mount is
// made with default_permissions (the kernel checks modes, as on virtio-fs) and
// allow_other (other users see the files, subject to those modes).
import { readFileSync, realpathSync, writeFileSync } from 'node:fs';
import { native, POLL_READABLE, type Poller } from '../native/index.js';
import type { Logger } from '../util/log.js';
import { ErrnoError } from '../util/errors.js';
import { E, Opcode } from './abi.js';
import type { FuseServer, PayloadTarget } from './server.js';
import { errorReply, type FuseReply } from './replies.js';

const MS_RDONLY = 1;
const MS_NOSUID = 2;
const MS_NODEV = 4;
const MNT_DETACH = 2;
const OUT_HEADER_SIZE = 16;
/** Requests are at most max_write (1 MiB) plus headers; the kernel wants room for a whole one. */
const READ_BUFFER_SIZE = (1 << 20) + 64 * 1024;
/** The largest READ the mount asks for (max_read). */
const MAX_READ = 1 << 20;
/** Kernel read-ahead of the mount, in KiB (see above). */
export const READ_AHEAD_KB = 4096;

export interface DevFuseOptions {
  readonly mountpoint: string;
  readonly readOnly: boolean;
  /** Shown as the mount's source in /proc/mounts (e.g. the bucket). */
  readonly fsName: string;
  readonly log: Logger;
  /**
   * Offer FUSE passthrough (src/fuse/passthrough.ts) with backing files of at most this
   * many bytes in all; absent: off.
   */
  readonly passthroughBytes?: number;
}

export class DevFuseMount {
  private readonly buf = new Uint8Array(READ_BUFFER_SIZE);
  private readonly bufView = new DataView(this.buf.buffer);
  private readonly hdr = new Uint8Array(OUT_HEADER_SIZE);
  private readonly hdrView = new DataView(this.hdr.buffer);
  /**
   * The payload room a READ's file reads into (PayloadTarget: the file store's in-place
   * read), so that such a READ up to 128 KiB is answered within dispatch(). The engine
   * reads in place only before its first await, and this transport offers no copy off the
   * event loop, so such a reply is written before the next request is read (within
   * dispatch(), or by the promise jobs that run right after it): each request may take the
   * room anew. `outOwner` is the READ that holds it, checked when its reply is written.
   */
  private readonly out = new Uint8Array(MAX_READ);
  private outOwner: bigint | null = null;
  private readonly poller: Poller;
  private closed = false;
  /** The mount's device (major:minor) while its read-ahead is still to be raised. */
  private raiseReadAhead: string | null;
  /** Resolves when the kernel ends the session (unmounted, by us or by someone else). */
  readonly ended: Promise<void>;
  private resolveEnded!: () => void;

  private constructor(
    private readonly fd: number,
    private readonly server: FuseServer,
    private readonly opts: DevFuseOptions,
    device: string | null,
  ) {
    this.ended = new Promise((resolve) => (this.resolveEnded = resolve));
    this.raiseReadAhead = device;
    if (opts.passthroughBytes !== undefined) {
      server.offerPassthrough({
        device: { open: (backing) => native.fuseBackingOpen(fd, backing), close: (id) => native.fuseBackingClose(fd, id) },
        maxBytes: opts.passthroughBytes, log: opts.log,
      });
    }
    this.poller = native.createPoller(fd, () => this.drain());
    this.poller.start(POLL_READABLE);
  }

  static mount(server: FuseServer, opts: DevFuseOptions): DevFuseMount {
    if (process.getuid?.() !== 0) throw new ErrnoError('EPERM', 'mounting with /dev/fuse needs root (CAP_SYS_ADMIN)');
    // Resolved before mounting: afterwards resolving it would ask this very process.
    let real = opts.mountpoint;
    try {
      real = realpathSync(opts.mountpoint);
    } catch {
      // mount(2) reports what is wrong with it
    }
    const fd = native.fuseOpen();
    try {
      const uid = process.getuid?.() ?? 0;
      const gid = process.getgid?.() ?? 0;
      native.mount(opts.fsName, opts.mountpoint, 'fuse.vhost-s3', MS_NOSUID | MS_NODEV | (opts.readOnly ? MS_RDONLY : 0),
        `fd=${fd},rootmode=40000,user_id=${uid},group_id=${gid},default_permissions,allow_other,max_read=${1 << 20}`);
    } catch (err) {
      native.close(fd);
      throw err;
    }
    opts.log.info('mounted', { mountpoint: opts.mountpoint, source: opts.fsName });
    return new DevFuseMount(fd, server, opts, mountDevice(real));
  }

  /**
   * Reads one request and hands it to the engine. The poll is level-triggered: requests
   * still pending wake us again at once, and the event loop's next poll is a system call it
   * makes anyway, whereas reading until EAGAIN costs a read that finds nothing on every
   * wake-up (one per request when a single synchronous reader sends them one at a time).
   */
  private drain(): void {
    if (this.closed) return;
    let n: number;
    try {
      n = native.readFd(this.fd, this.buf);
    } catch (err) {
      // ENODEV: unmounted; anything else: the session is unusable either way.
      if ((err as { code?: string }).code !== 'ENODEV') this.opts.log.error('reading /dev/fuse failed', { error: err });
      this.end();
      return;
    }
    if (n < 0) return;
    this.outOwner = null;
    const payload = n >= 16 && this.bufView.getUint32(4, true) === Opcode.READ ? this.payloadFor(this.bufView.getBigUint64(8, true)) : undefined;
    // The engine may keep the request (a WRITE's data) after this call: give it its own copy.
    this.server.dispatch(this.buf.slice(0, n), READ_BUFFER_SIZE, this.reply, payload);
  }

  private payloadFor(unique: bigint): PayloadTarget {
    return (length) => {
      if (this.outOwner !== null || length <= 0 || length > this.out.length) return null;
      this.outOwner = unique;
      return [this.out.subarray(0, length)];
    };
  }

  private readonly reply = (reply: FuseReply | null): void => this.send(reply);

  private send(reply: FuseReply | null): void {
    if (reply === null || this.closed) return;
    if (reply.inPlace && reply.unique !== this.outOwner) {
      // The room was taken by a later request: sending it would answer with its bytes.
      this.opts.log.error('an in-place READ reply came after its room was reused', { unique: reply.unique });
      reply = errorReply(reply.unique, E.EIO);
    }
    // writev is synchronous: one header buffer serves every reply.
    const hdr = this.hdr;
    this.hdrView.setUint32(0, OUT_HEADER_SIZE + reply.length, true);
    this.hdrView.setInt32(4, reply.error, true);
    this.hdrView.setBigUint64(8, reply.unique, true);
    const parts = reply.inPlace ? [this.out.subarray(0, reply.length)] : reply.parts;
    try {
      native.writevFd(this.fd, parts.length === 1 ? [hdr, parts[0]!] : [hdr, ...parts]);
    } catch (err) {
      // ENOENT: the request was interrupted and the kernel no longer waits for it.
      if ((err as { code?: string }).code !== 'ENOENT') this.opts.log.warn('writing a FUSE reply failed', { error: err });
    }
    if (this.raiseReadAhead !== null && this.server.isInitialized) this.setReadAhead(this.raiseReadAhead);
  }

  /** After INIT's reply (the kernel took max_readahead in the writev): the device's read_ahead_kb. */
  private setReadAhead(dev: string): void {
    this.raiseReadAhead = null;
    try {
      writeFileSync(`/sys/class/bdi/${dev}/read_ahead_kb`, `${READ_AHEAD_KB}\n`);
    } catch (err) {
      this.opts.log.debug('could not raise the mount\'s read-ahead', { device: dev, error: err });
    }
  }

  private end(): void {
    if (this.closed) return;
    this.closed = true;
    this.poller.close();
    native.close(this.fd);
    this.resolveEnded();
  }

  /** Unmounts (lazily: open files elsewhere keep working until closed), waits for running requests, closes the Vfs. */
  async unmount(): Promise<void> {
    if (!this.closed) {
      try {
        native.umount(this.opts.mountpoint, MNT_DETACH);
      } catch (err) {
        this.opts.log.warn('unmount failed', { mountpoint: this.opts.mountpoint, error: err });
      }
      this.end();
    }
    await this.server.close();
    this.opts.log.info('unmounted', { mountpoint: this.opts.mountpoint });
  }
}

/**
 * The device number (major:minor) of the newest mount on `mountpoint`, from
 * /proc/self/mountinfo (a stat of the mount point would ask this very process), or null.
 */
export function mountDevice(mountpoint: string): string | null {
  let dev: string | null = null;
  try {
    for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
      const f = line.split(' ');
      if (f.length > 4 && unescapeMountinfo(f[4]!) === mountpoint && /^\d+:\d+$/.test(f[2]!)) dev = f[2]!;
    }
  } catch {
    return null;
  }
  return dev;
}

/** mountinfo escapes space, tab, newline and backslash as \ooo. */
function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}
