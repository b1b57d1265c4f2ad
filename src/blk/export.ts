// A blk export: one image served as a vhost-user-blk device on one socket.
import { VhostUserServer } from '../vhost/server.js';
import type { Logger } from '../util/log.js';
import { ConfigError } from '../util/errors.js';
import { BlkDevice } from './device.js';
import type { BlockImage } from './image.js';
import type { RequestObserver } from '../metrics/observer.js';

export interface BlkExportOptions {
  readonly socket: string;
  /** The opened image; the export owns it from now on (closes it, also when starting fails). */
  readonly image: BlockImage;
  /** For logs: where the image lives. */
  readonly locator: string;
  readonly queues: number;
  readonly serial: string;
  readonly log: Logger;
  /** Reports every request (metrics). */
  readonly observer?: RequestObserver;
}

export class BlkExport {
  private constructor(
    readonly image: BlockImage,
    readonly device: BlkDevice,
    private readonly server: VhostUserServer,
  ) {}

  static async start(opts: BlkExportOptions): Promise<BlkExport> {
    const image = opts.image;
    const log = opts.log.child({ device: 'blk', socket: opts.socket });
    const device = new BlkDevice({ image, numQueues: opts.queues, serial: opts.serial, log, ...(opts.observer ? { observer: opts.observer } : {}) });
    try {
      const server = new VhostUserServer(opts.socket, device, { log });
      try {
        server.listen();
      } catch (err) {
        throw new ConfigError(`cannot listen on ${opts.socket}: ${(err as Error).message}`);
      }
      log.info('serving vhost-user-blk', { image: opts.locator, size: image.size, readOnly: image.readOnly, queues: opts.queues });
      return new BlkExport(image, device, server);
    } catch (err) {
      await image.close();
      throw err;
    }
  }

  /** The vhost-user server (session events, the socket path). */
  get vhostServer(): VhostUserServer {
    return this.server;
  }

  /** Stops accepting, lets in-flight requests complete, then makes the image durable and closes it. */
  async close(): Promise<void> {
    await this.server.close();
    try {
      await new Promise<void>((resolve, reject) => {
        this.image.flush((r) => (r < 0 ? reject(new Error(`flush failed: errno ${-r}`)) : resolve()));
        this.image.unplug();
      });
    } finally {
      // Released even when data could not be made durable (the error still reaches the caller).
      await this.image.close();
    }
  }
}
