// An fs export: one Vfs served as a vhost-user-fs device on one socket.
import { VhostUserServer } from '../vhost/server.js';
import type { Logger } from '../util/log.js';
import { ConfigError } from '../util/errors.js';
import { FuseServer, type FuseServerOptions } from './server.js';
import { VirtioFsDevice } from './virtiofs-device.js';
import type { Vfs } from './vfs.js';

export interface FsExportOptions {
  readonly socket: string;
  readonly vfs: Vfs;
  /** Request queues (default 1); QEMU's num-request-queues must not exceed it. */
  readonly requestQueues?: number;
  /** Entry/attr timeouts, max_write and the like. */
  readonly fuse?: Omit<FuseServerOptions, 'log'>;
  /** For logs: what is served. */
  readonly locator?: string;
  readonly log: Logger;
}

export class FsExport {
  private constructor(
    readonly vfs: Vfs,
    readonly server: FuseServer,
    readonly device: VirtioFsDevice,
    private readonly vhost: VhostUserServer,
  ) {}

  static async start(opts: FsExportOptions): Promise<FsExport> {
    const log = opts.log.child({ device: 'fs', socket: opts.socket });
    const requestQueues = opts.requestQueues ?? 1;
    const server = new FuseServer(opts.vfs, { ...opts.fuse, log });
    const device = new VirtioFsDevice({ server, requestQueues, log });
    const vhost = new VhostUserServer(opts.socket, device, { log });
    try {
      vhost.listen();
    } catch (err) {
      throw new ConfigError(`cannot listen on ${opts.socket}: ${(err as Error).message}`);
    }
    log.info('serving vhost-user-fs', { source: opts.locator, requestQueues });
    return new FsExport(opts.vfs, server, device, vhost);
  }

  /** The vhost-user server (session events, the socket path). */
  get vhostServer(): VhostUserServer {
    return this.vhost;
  }

  /**
   * Stops accepting, lets in-flight requests complete, releases the files the guest had
   * open, and closes the Vfs (everything buffered is stored).
   */
  async close(): Promise<void> {
    await this.vhost.close();
    await this.device.whenReset();
    await this.server.close();
  }
}
