// An echo device (test/vhost/helpers.ts) served by a VhostUserServer on a socket in a
// fresh temporary directory, with the backend sessions it opens: the set-up the vhost
// session tests share, either per test (useEchoSession) or per suite (EchoServer).
import { VhostUserServer } from '../../src/vhost/server.js';
import { FrontendSession } from '../../src/vhost/frontend-session.js';
import type { BackendSession } from '../../src/vhost/backend-session.js';
import type { VhostUserDevice } from '../../src/vhost/device.js';
import { FrontendMemory, TempDir } from '../vhost/helpers.js';

/** A listening server for `device`, recording every session it opens, in order. */
export class EchoServer<D extends VhostUserDevice = VhostUserDevice> {
  readonly dir = new TempDir();
  readonly path: string;
  readonly server: VhostUserServer;
  readonly sessions: BackendSession[] = [];

  constructor(
    readonly device: D,
    socketName = 'echo.sock',
  ) {
    this.path = this.dir.file(socketName);
    this.server = new VhostUserServer(this.path, device);
    this.server.on('session', (s: BackendSession) => this.sessions.push(s));
    this.server.listen();
  }

  async close(): Promise<void> {
    await this.server.close();
    this.dir.remove();
  }
}

export interface EchoSessionOptions {
  memSize?: number;
  guestBase?: number;
}

/** What a test sees of the per-test fixture: set afresh before each test (undefined outside one). */
export class EchoSession<D extends VhostUserDevice> {
  device!: D;
  path!: string;
  server!: VhostUserServer;
  sessions!: BackendSession[];
  /** The frontend's guest memory, to hand the backend with addMemRegion. */
  mem!: FrontendMemory;
  /** Closed (in order) after the test, before the server: frontends, rings, fds. */
  toClose: Array<{ close(): void }> = [];
  #echo: EchoServer<D> | undefined;

  /** A frontend connected to the server (not negotiated), closed after the test. */
  async connect(): Promise<FrontendSession> {
    const fe = await FrontendSession.connect(this.path, { timeoutMs: 5000 });
    this.toClose.push(fe);
    return fe;
  }

  start(device: D, o: Required<EchoSessionOptions>): void {
    const echo = (this.#echo = new EchoServer(device));
    ({ device: this.device, path: this.path, server: this.server, sessions: this.sessions } = echo);
    this.mem = new FrontendMemory(o.memSize, o.guestBase);
    this.toClose = [];
  }

  async stop(): Promise<void> {
    for (const c of this.toClose) c.close();
    await this.#echo?.close();
    this.mem.close();
  }
}

/**
 * Registers beforeEach/afterEach in the calling describe: each test gets a new device from
 * makeDevice served on echo.sock, and frontend memory (1 MiB at guest 0x40000000 unless
 * told); after it, toClose is closed, then the server, then the memory.
 */
export function useEchoSession<D extends VhostUserDevice>(makeDevice: () => D, o: EchoSessionOptions = {}): EchoSession<D> {
  const fx = new EchoSession<D>();
  const opts = { memSize: o.memSize ?? 1 << 20, guestBase: o.guestBase ?? 0x40000000 };
  beforeEach(() => fx.start(makeDevice(), opts));
  afterEach(() => fx.stop());
  return fx;
}
