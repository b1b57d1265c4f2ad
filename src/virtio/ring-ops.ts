// The two fenced ring operations both queue sides need. In production they are the
// addon's `publishIdx` and `fence` (a release store plus a full fence in C++: x86 does
// not order a store before a later load, and JS has no fence of its own). A pure-JS
// stand-in exists for unit tests and for when the addon is not built yet: it is correct
// only when both ring sides run on this one thread (as in the round-trip tests).
import { native } from '../native/index.js';
import { needEvent } from './layout.js';

export interface RingOps {
  /** See NativeAddon.publishIdx: store idx, fence, decide and perform the notification. */
  publishIdx(
    idxBuf: ArrayBuffer, idxOffset: number, newIdx: number, oldIdx: number,
    evBuf: ArrayBuffer, evOffset: number, eventIdx: boolean, notifyFd: number,
  ): boolean;
  /** Full memory barrier. */
  fence(): void;
}

function jsPublishIdx(
  idxBuf: ArrayBuffer, idxOffset: number, newIdx: number, oldIdx: number,
  evBuf: ArrayBuffer, evOffset: number, eventIdx: boolean, notifyFd: number,
): boolean {
  new DataView(idxBuf).setUint16(idxOffset, newIdx, true);
  const ev = new DataView(evBuf).getUint16(evOffset, true);
  const notify = eventIdx ? needEvent(ev, newIdx & 0xffff, oldIdx & 0xffff) : (ev & 1) === 0;
  if (notify && notifyFd >= 0) {
    if (typeof native.eventfdWrite !== 'function') {
      throw new Error('cannot signal an eventfd: the native addon is not built');
    }
    native.eventfdWrite(notifyFd, 1);
  }
  return notify;
}

/** Same-thread stand-in (tests, or before the addon exists). */
export const jsRingOps: RingOps = {
  publishIdx: jsPublishIdx,
  fence(): void {
    /* single thread: program order is enough */
  },
};

/** Whether the addon provides the fenced operations. */
export function nativeRingOpsAvailable(): boolean {
  const n = native as Partial<RingOps>;
  return typeof n.publishIdx === 'function' && typeof n.fence === 'function';
}

/** The addon's operations when built, else the same-thread stand-in. */
export function defaultRingOps(): RingOps {
  return nativeRingOpsAvailable() ? (native as RingOps) : jsRingOps;
}
