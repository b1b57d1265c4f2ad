// A vhost-user backend listening on a Unix socket. vhost-user has one frontend per
// socket: while a session is active, further connections are accepted and closed at once
// (with a log line); while a session is being torn down, new connections wait in the
// listen backlog and are served, from a clean state, as soon as it is gone.
import { EventEmitter } from 'node:events';
import { lstatSync, unlinkSync } from 'node:fs';
import { native, POLL_READABLE, type Poller } from '../native/index.js';
import type { VhostUserDevice } from './device.js';
import { BackendSession, nullLogger, type BackendSessionOptions, type VhostLogger } from './backend-session.js';

export interface VhostUserServerOptions extends BackendSessionOptions {
  /** listen(2) backlog (default 4). */
  backlog?: number;
}

/** Single-object form of the constructor arguments. */
export interface VhostUserServerConfig extends VhostUserServerOptions {
  path: string;
  device: VhostUserDevice;
}

/**
 * Events: 'session' (BackendSession) when a frontend connects, 'disconnect' when its
 * session has been torn down, 'error' (Error) when accepting fails.
 */
export class VhostUserServer extends EventEmitter {
  readonly socketPath: string;
  readonly device: VhostUserDevice;
  private readonly options: VhostUserServerOptions;
  private readonly log: VhostLogger;
  private listenFd = -1;
  private poller: Poller | null = null;
  private accepting = false;
  private active: BackendSession | null = null;
  private closing: Promise<void> | null = null;
  private sessionCount = 0;

  constructor(config: VhostUserServerConfig);
  constructor(socketPath: string, device: VhostUserDevice, options?: VhostUserServerOptions);
  constructor(pathOrConfig: string | VhostUserServerConfig, device?: VhostUserDevice, options: VhostUserServerOptions = {}) {
    super();
    if (typeof pathOrConfig === 'string') {
      if (device === undefined) throw new TypeError('VhostUserServer: no device');
      this.socketPath = pathOrConfig;
      this.device = device;
      this.options = options;
    } else {
      const { path, device: dev, ...rest } = pathOrConfig;
      this.socketPath = path;
      this.device = dev;
      this.options = rest;
    }
    this.log = this.options.log ?? nullLogger;
  }

  /** The connected frontend's session, if any. */
  get session(): BackendSession | null {
    return this.active;
  }

  get listening(): boolean {
    return this.listenFd >= 0;
  }

  /**
   * Starts listening. A stale socket file at the path is removed first; any other kind
   * of file there is an error (EEXIST), never deleted.
   */
  listen(): void {
    if (this.listenFd >= 0) return;
    if (this.closing !== null) throw new Error('server is closed');
    removeStaleSocket(this.socketPath);
    this.listenFd = native.unixListen(this.socketPath, this.options.backlog ?? 4);
    this.poller = native.createPoller(this.listenFd, (status) => this.onAcceptable(status));
    this.setAccepting(true);
    this.log.info('vhost-user server listening', { socket: this.socketPath, device: this.device.kind });
  }

  /**
   * Stops listening, removes the socket file and closes the active session gracefully
   * (its in-flight requests complete first).
   */
  close(): Promise<void> {
    if (this.closing !== null) return this.closing;
    this.closing = (async () => {
      this.setAccepting(false);
      if (this.poller !== null) {
        this.poller.close();
        this.poller = null;
      }
      if (this.listenFd >= 0) {
        native.close(this.listenFd);
        this.listenFd = -1;
        try {
          unlinkSync(this.socketPath);
        } catch {
          // already gone
        }
      }
      const s = this.active;
      if (s !== null) await s.close();
      this.log.info('vhost-user server closed', { socket: this.socketPath });
    })();
    return this.closing;
  }

  private setAccepting(on: boolean): void {
    if (this.poller === null || on === this.accepting) return;
    this.accepting = on;
    if (on) this.poller.start(POLL_READABLE);
    else this.poller.stop();
  }

  private onAcceptable(status: number): void {
    if (this.listenFd < 0) return;
    if (status < 0) {
      this.log.error('vhost-user listen socket poll error', { status });
      this.emit('error', new Error(`poll error ${status} on ${this.socketPath}`));
      return;
    }
    for (;;) {
      let fd: number;
      try {
        fd = native.unixAccept(this.listenFd);
      } catch (err) {
        this.log.error('accept failed', { error: err });
        return;
      }
      if (fd < 0) return;
      if (this.active !== null) {
        // One frontend per socket. (Only reached while a session is active; during a
        // teardown we stop accepting so new connections wait in the backlog.)
        this.log.warn('refusing a second vhost-user frontend connection', { socket: this.socketPath });
        native.close(fd);
        continue;
      }
      this.startSession(fd);
    }
  }

  private startSession(fd: number): void {
    const id = ++this.sessionCount;
    const log = this.options.log !== undefined && 'child' in this.options.log
      ? (this.options.log as VhostLogger & { child(f: Record<string, unknown>): VhostLogger }).child({ session: id })
      : this.log;
    let session: BackendSession;
    try {
      session = new BackendSession(fd, this.device, { ...this.options, log });
    } catch (err) {
      this.log.error('cannot start a vhost-user session', { error: err });
      native.close(fd);
      return;
    }
    this.active = session;
    log.info('vhost-user frontend connected', { socket: this.socketPath });
    session.once('closing', () => this.setAccepting(false));
    session.once('close', () => {
      this.active = null;
      this.emit('disconnect', session);
      if (this.closing === null) this.setAccepting(true);
    });
    this.emit('session', session);
  }
}

function removeStaleSocket(path: string): void {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return; // nothing there
  }
  if (!st.isSocket()) {
    const err = new Error(`${path} exists and is not a socket`) as Error & { code: string; errno: number };
    err.code = 'EEXIST';
    err.errno = 17;
    throw err;
  }
  // A socket another server still listens on is not stale: refuse rather than steal it.
  let fd = -1;
  try {
    fd = native.unixConnect(path);
  } catch {
    unlinkSync(path); // nobody listening (ECONNREFUSED)
    return;
  }
  native.close(fd);
  const err = new Error(`${path} is in use by another running server`) as Error & { code: string; errno: number };
  err.code = 'EADDRINUSE';
  err.errno = 98;
  throw err;
}
