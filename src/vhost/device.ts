// What a vhost-user backend session needs from the device it serves (virtio-blk,
// virtio-fs). The session owns the socket, guest memory and queue fds; the device owns
// request handling. A device never sees a vhost-user message.
import type { DeviceQueue } from '../virtio/queue.js';

export interface VhostUserDevice {
  /** Short name for logs ("blk", "fs"). */
  readonly kind: string;
  /** Queues the device can use; GET_QUEUE_NUM answers this. */
  readonly maxQueues: number;
  /**
   * Virtio feature bits offered (device bits plus VERSION_1, EVENT_IDX, INDIRECT_DESC as
   * the device supports them). The session adds VHOST_USER_F_PROTOCOL_FEATURES.
   */
  readonly features: bigint;
  /** Extra protocol features the device needs (CONFIG for blk). */
  readonly protocolFeatures: bigint;
  /** Device config space bytes [offset, offset+size), zero-filled past its end. */
  getConfig(offset: number, size: number): Uint8Array;
  /** SET_CONFIG; returns false to refuse (the session replies with an error). */
  setConfig(offset: number, data: Uint8Array): boolean;
  /** The features the frontend acked (SET_FEATURES), before any queue starts. */
  setFeatures(features: bigint): void;
  /**
   * A queue became ready (size, addresses, kick fd, and enabled when F_PROTOCOL_FEATURES
   * was acked): start serving it. queue.eventIdx/indirect/callFd/lastAvailIdx are set.
   * queue.callFd may change later (SET_VRING_CALL); read it when signalling, never cache it.
   */
  startQueue(queue: DeviceQueue): void;
  /**
   * The driver kicked this started queue: pop and handle everything available. Also
   * called once right after startQueue() and after a re-enable, without a kick, so
   * buffers made available before the kick fd was watched are served.
   */
  onKick(queue: DeviceQueue): void;
  /**
   * Stop serving a queue: resolves once no request popped from it is still in flight
   * and every completion has been pushed and flushed (GET_VRING_BASE waits on this, as
   * do RESET_DEVICE and disconnect). No onKick() arrives for it meanwhile; guest memory
   * stays mapped until it resolves. Afterwards queue.lastAvailIdx is reported to the
   * frontend and the queue is reset().
   */
  stopQueue(queue: DeviceQueue): Promise<void>;
  /** The frontend went away or reset the device: drop per-connection state. */
  reset(): void;
}
