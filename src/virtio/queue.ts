// Device side of a split virtqueue (virtio 1.x §2.7). The ring lives in guest memory;
// every index and address read from it is checked before use.
import type { GuestMemory } from './memory.js';
import type { DescriptorChain, ChainError } from './chain.js';

export interface RingAddresses {
  /** Frontend virtual addresses, as SET_VRING_ADDR carries them. */
  readonly desc: number;
  readonly avail: number;
  readonly used: number;
  /** VHOST_VRING_F_LOG etc.; unused. */
  readonly flags: number;
}

export type PopResult =
  | { readonly kind: 'chain'; readonly chain: DescriptorChain }
  | { readonly kind: 'bad'; readonly head: number; readonly error: ChainError }
  | { readonly kind: 'empty' };

export declare class DeviceQueue {
  constructor(index: number);
  readonly index: number;
  size: number;
  /** next avail index to consume (SET_VRING_BASE / GET_VRING_BASE). */
  lastAvailIdx: number;
  callFd: number; // -1 when none: then completions are published without signalling
  eventIdx: boolean; // VIRTIO_RING_F_EVENT_IDX negotiated
  indirect: boolean; // VIRTIO_RING_F_INDIRECT_DESC negotiated
  /** Resolves the ring addresses; false if any ring is not fully inside one mapped window. */
  setAddresses(memory: GuestMemory, addrs: RingAddresses): boolean;
  readonly ready: boolean;
  /** Pops the next available chain; bad chains are reported so the device can fail them. */
  pop(): PopResult;
  /** Adds a used element (head, bytes written) without publishing. */
  push(head: number, written: number): void;
  /**
   * Publishes pushed elements (one fenced idx store) and signals callFd if the driver
   * wants it (EVENT_IDX / NO_INTERRUPT). Returns whether it signalled.
   */
  flush(): boolean;
  /**
   * With EVENT_IDX: writes avail_event = lastAvailIdx, fences, and returns true if more
   * buffers arrived meanwhile (caller should keep popping). Without: toggles used.flags.
   */
  enableNotification(): boolean;
  disableNotification(): void;
  /** Forget ring addresses and counters (queue stopped / device reset). */
  reset(): void;
}
