// Message framing over a non-blocking Unix stream socket, for both sides of vhost-user.
//
// MessageReader reads exactly the 12-byte header (collecting the SCM_RIGHTS fds that ride
// on it), then exactly `size` payload bytes, resuming across readable events when the
// kernel hands over less. Reading exact lengths keeps one message's fds from being mixed
// with the next message's bytes. MessageWriter sends header+payload+fds with one
// sendmsg and queues the rest on EAGAIN (control plane: rare and small).
// MessageChannel ties both to one uv_poll watcher (libuv allows one per fd).
import { native, POLL_READABLE, POLL_WRITABLE, type Poller, type RecvResult } from '../native/index.js';
import { ProtocolError, decodeHeader, encodeMessage, type MessageHeader, type VhostUserMessage } from './codec.js';
import { HEADER_SIZE, MAX_FDS_PER_MESSAGE, MAX_PAYLOAD_SIZE, requestName } from './protocol.js';

export type RecvFn = (buf: Uint8Array, offset: number, length: number, maxFds: number) => RecvResult | null;
export type SendFn = (buf: Uint8Array, offset: number, length: number, fds: number[]) => number;
export type CloseFdFn = (fd: number) => void;

export interface ReadResult {
  /** Complete messages, in order. The caller owns their fds. */
  readonly messages: VhostUserMessage[];
  /** The peer closed the connection (or reset it). */
  readonly eof: boolean;
  /** A framing or socket error: the connection must be closed. */
  readonly error?: Error;
}

function errCode(err: unknown): string {
  return typeof err === 'object' && err !== null && typeof (err as { code?: unknown }).code === 'string'
    ? (err as { code: string }).code
    : '';
}

function closeAll(fds: readonly number[], closeFd: CloseFdFn): void {
  for (const fd of fds) {
    try {
      closeFd(fd);
    } catch {
      // already closed or never valid: nothing more to do
    }
  }
}

export class MessageReader {
  private readonly header = new Uint8Array(HEADER_SIZE);
  private headerGot = 0;
  private hdr: MessageHeader | null = null;
  private payload: Uint8Array | null = null;
  private payloadGot = 0;
  private fds: number[] = [];
  private failed = false;

  constructor(
    private readonly recv: RecvFn,
    private readonly closeFd: CloseFdFn = (fd) => native.close(fd),
    private readonly maxPayload: number = MAX_PAYLOAD_SIZE,
  ) {}

  static forSocket(fd: number, maxPayload: number = MAX_PAYLOAD_SIZE): MessageReader {
    return new MessageReader((b, o, l, m) => native.recvMsg(fd, b, o, l, m), (f) => native.close(f), maxPayload);
  }

  /** True while part of a message has been read. */
  get partial(): boolean {
    return this.headerGot > 0;
  }

  /**
   * Reads until the socket has nothing more (EAGAIN), the peer closes, or `limit`
   * messages are complete. Never throws.
   */
  read(limit = Infinity): ReadResult {
    const messages: VhostUserMessage[] = [];
    if (this.failed) return { messages, eof: true };
    try {
      while (messages.length < limit) {
        const r = this.step();
        if (r === 'again') break;
        if (r === 'eof') {
          if (this.partial) {
            const err = new ProtocolError('EBADMSG', 'connection closed in the middle of a message');
            this.fail();
            return { messages, eof: true, error: err };
          }
          return { messages, eof: true };
        }
        if (r !== 'more') messages.push(r);
      }
      return { messages, eof: false };
    } catch (err) {
      this.fail();
      const code = errCode(err);
      if (code === 'ECONNRESET') return { messages, eof: true };
      const error =
        err instanceof ProtocolError
          ? err
          : code === 'EMSGSIZE'
            ? new ProtocolError('EMSGSIZE', 'too many file descriptors with one message')
            : err instanceof Error
              ? err
              : new Error(String(err));
      return { messages, eof: true, error };
    }
  }

  /** Closes the fds of a partly read message. */
  dispose(): void {
    closeAll(this.fds, this.closeFd);
    this.fds = [];
    this.headerGot = 0;
    this.hdr = null;
    this.payload = null;
  }

  private fail(): void {
    this.failed = true;
    this.dispose();
  }

  private take(r: RecvResult): void {
    for (const fd of r.fds) this.fds.push(fd);
    if (this.fds.length > MAX_FDS_PER_MESSAGE) {
      throw new ProtocolError('EMSGSIZE', `${this.fds.length} file descriptors with one message`);
    }
  }

  private step(): VhostUserMessage | 'again' | 'eof' | 'more' {
    if (this.hdr === null) {
      const r = this.recv(this.header, this.headerGot, HEADER_SIZE - this.headerGot, MAX_FDS_PER_MESSAGE);
      if (r === null) return 'again';
      this.take(r);
      if (r.bytes === 0) return 'eof';
      this.headerGot += r.bytes;
      if (this.headerGot < HEADER_SIZE) return 'more';
      const hdr = decodeHeader(this.header);
      if (hdr.size > this.maxPayload) {
        throw new ProtocolError(
          'EMSGSIZE',
          `${requestName(hdr.request)}: payload size ${hdr.size} exceeds ${this.maxPayload}`,
        );
      }
      this.hdr = hdr;
      this.payload = new Uint8Array(hdr.size);
      this.payloadGot = 0;
      if (hdr.size > 0) return 'more';
    } else if (this.payloadGot < this.hdr.size) {
      const payload = this.payload!;
      const r = this.recv(payload, this.payloadGot, payload.byteLength - this.payloadGot, MAX_FDS_PER_MESSAGE);
      if (r === null) return 'again';
      this.take(r);
      if (r.bytes === 0) return 'eof';
      this.payloadGot += r.bytes;
      if (this.payloadGot < payload.byteLength) return 'more';
    }
    const hdr = this.hdr!;
    const msg: VhostUserMessage = { request: hdr.request, flags: hdr.flags, payload: this.payload!, fds: this.fds };
    this.fds = [];
    this.hdr = null;
    this.payload = null;
    this.headerGot = 0;
    this.payloadGot = 0;
    return msg;
  }
}

interface Pending {
  buf: Uint8Array;
  offset: number;
  /** Our own dups of the caller's fds, sent with the first byte; [] once sent. */
  fds: number[];
}

export class MessageWriter {
  private readonly queue: Pending[] = [];

  constructor(
    private readonly send: SendFn,
    private readonly dupFd: (fd: number) => number = (fd) => native.dup(fd),
    private readonly closeFd: CloseFdFn = (fd) => native.close(fd),
  ) {}

  static forSocket(fd: number): MessageWriter {
    return new MessageWriter((b, o, l, f) => native.sendMsg(fd, b, o, l, f));
  }

  get pending(): boolean {
    return this.queue.length > 0;
  }

  /** Messages (or message tails) waiting for the socket. */
  get backlog(): number {
    return this.queue.length;
  }

  /**
   * Sends a whole message (header+payload in `bytes`) with `fds` attached. The caller
   * keeps ownership of its fds: when the message has to wait, the writer sends dups.
   * Returns true when everything went out now. Throws on socket errors (EPIPE, ...).
   */
  write(bytes: Uint8Array, fds: readonly number[] = []): boolean {
    if (this.queue.length === 0) {
      const n = this.send(bytes, 0, bytes.byteLength, fds.slice());
      if (n === bytes.byteLength) return true;
      if (n > 0) {
        this.queue.push({ buf: bytes, offset: n, fds: [] });
        return false;
      }
    }
    const dups: number[] = [];
    try {
      for (const fd of fds) dups.push(this.dupFd(fd));
    } catch (err) {
      closeAll(dups, this.closeFd);
      throw err;
    }
    this.queue.push({ buf: bytes, offset: 0, fds: dups });
    return false;
  }

  /** Sends what was queued; true when the queue is empty. Throws on socket errors. */
  flush(): boolean {
    while (this.queue.length > 0) {
      const p = this.queue[0]!;
      const n = this.send(p.buf, p.offset, p.buf.byteLength - p.offset, p.fds);
      if (n <= 0) return false;
      closeAll(p.fds, this.closeFd);
      p.fds = [];
      p.offset += n;
      if (p.offset < p.buf.byteLength) return false;
      this.queue.shift();
    }
    return true;
  }

  /** Drops what is queued (closing the dups). */
  dispose(): void {
    for (const p of this.queue) closeAll(p.fds, this.closeFd);
    this.queue.length = 0;
  }
}

export interface ChannelHandlers {
  /** One complete message; the handler owns msg.fds. */
  onMessage(msg: VhostUserMessage): void;
  /** Called once when the channel is closed: by the peer, by an error, or by close(). */
  onClose(error: Error | undefined, byPeer: boolean): void;
}

/**
 * A connected vhost-user socket: reads messages as they arrive, writes with queueing.
 * Owns the fd (closed by close()).
 */
export class MessageChannel {
  private readonly reader: MessageReader;
  private readonly writer: MessageWriter;
  private readonly poller: Poller;
  private paused = false;
  private events = 0;
  private isClosed = false;
  private drainWaiters: Array<() => void> = [];

  constructor(
    readonly fd: number,
    private readonly handlers: ChannelHandlers,
    maxPayload: number = MAX_PAYLOAD_SIZE,
  ) {
    this.reader = MessageReader.forSocket(fd, maxPayload);
    this.writer = MessageWriter.forSocket(fd);
    this.poller = native.createPoller(fd, (status, events) => this.onPoll(status, events));
    this.updatePoll();
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** Messages queued because the peer is not reading. */
  get writeBacklog(): number {
    return this.writer.backlog;
  }

  /** Resolves once nothing is queued for the socket (or the channel is closed). */
  drained(): Promise<void> {
    if (this.isClosed || !this.writer.pending) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  /** Sends a message; errors close the channel (reported through onClose). */
  send(request: number, flags: number, payload?: Uint8Array, fds: readonly number[] = []): void {
    if (this.isClosed) return;
    try {
      this.writer.write(encodeMessage(request, flags, payload), fds);
    } catch (err) {
      this.closeWith(err instanceof Error ? err : new Error(String(err)), true);
      return;
    }
    this.updatePoll();
  }

  /** Stops reading new messages (back-pressure while earlier ones are processed). */
  pause(): void {
    this.paused = true;
    this.updatePoll();
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.updatePoll();
    // Data may already be buffered in the socket; the level-triggered poll reports it.
  }

  close(): void {
    this.closeWith(undefined, false);
  }

  private closeWith(error: Error | undefined, byPeer: boolean): void {
    if (this.isClosed) return;
    this.isClosed = true;
    try {
      this.poller.stop();
      this.poller.close();
    } catch {
      // poller already gone
    }
    this.reader.dispose();
    this.writer.dispose();
    try {
      native.close(this.fd);
    } catch {
      // already closed
    }
    this.wakeDrained();
    this.handlers.onClose(error, byPeer);
  }

  private wakeDrained(): void {
    for (const w of this.drainWaiters.splice(0)) w();
  }

  private updatePoll(): void {
    if (this.isClosed) return;
    const want = (this.paused ? 0 : POLL_READABLE) | (this.writer.pending ? POLL_WRITABLE : 0);
    if (want === this.events) return;
    this.events = want;
    if (want === 0) this.poller.stop();
    else this.poller.start(want);
  }

  private onPoll(status: number, events: number): void {
    if (this.isClosed) return;
    if (status < 0) {
      this.closeWith(new ProtocolError('EPROTO', `socket poll error ${status}`), true);
      return;
    }
    if ((events & POLL_WRITABLE) !== 0) {
      try {
        if (this.writer.flush()) this.wakeDrained();
      } catch (err) {
        this.closeWith(err instanceof Error ? err : new Error(String(err)), true);
        return;
      }
    }
    if ((events & POLL_READABLE) !== 0 && !this.paused) {
      const r = this.reader.read(64);
      for (let i = 0; i < r.messages.length; i++) {
        const msg = r.messages[i]!;
        if (this.isClosed) {
          closeAll(msg.fds, (fd) => native.close(fd));
          continue;
        }
        this.handlers.onMessage(msg);
      }
      if (r.eof || r.error !== undefined) {
        this.closeWith(r.error, true);
        return;
      }
    }
    this.updatePoll();
  }
}

/** Closes fds, ignoring errors (helper for message handlers). */
export function closeFds(fds: readonly number[]): void {
  closeAll(fds, (fd) => native.close(fd));
}
