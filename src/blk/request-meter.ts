// Metrics of a blk device's requests: what each request in flight is (type, start time,
// bytes it writes), kept per queue by descriptor head until its status is written.
import type { RequestObserver } from '../metrics/observer.js';
import { BlkStatus, BlkType } from './protocol.js';

const TYPE_NAMES = new Map<number, string>([
  [BlkType.In, 'in'], [BlkType.Out, 'out'], [BlkType.Flush, 'flush'], [BlkType.GetId, 'get_id'],
  [BlkType.Discard, 'discard'], [BlkType.WriteZeroes, 'write_zeroes'],
]);
const STATUS_NAMES = new Map<number, string>([[BlkStatus.Ok, 'ok'], [BlkStatus.IoErr, 'ioerr'], [BlkStatus.Unsupp, 'unsupp']]);

/** -1: the request was too short to have a type. */
export const NO_TYPE = -1;

interface InFlight {
  readonly start: Float64Array;
  readonly type: Int32Array;
  readonly outBytes: Float64Array;
}

export class BlkRequestMeter {
  private readonly queues = new Map<number, InFlight>();

  constructor(private readonly obs: RequestObserver) {}

  /** A queue (re)started with `size` entries: heads are below it. */
  startQueue(index: number, size: number): void {
    this.queues.set(index, { start: new Float64Array(size), type: new Int32Array(size), outBytes: new Float64Array(size) });
  }

  begin(queue: number, head: number, type: number, outBytes: number): void {
    const q = this.queues.get(queue);
    if (q === undefined || head >= q.start.length) return;
    q.start[head] = this.obs.start();
    q.type[head] = type;
    q.outBytes[head] = outBytes;
  }

  /** The status was written; `inBytes` were read into the guest's buffers. */
  end(queue: number, head: number, status: number, inBytes: number): void {
    const q = this.queues.get(queue);
    if (q === undefined || head >= q.start.length) return;
    const type = q.type[head]!;
    const op = type === NO_TYPE ? 'malformed' : TYPE_NAMES.get(type) ?? 'unsupported';
    const ok = status === BlkStatus.Ok;
    this.obs.done(q.start[head]!, op, STATUS_NAMES.get(status) ?? String(status), ok && type === BlkType.In ? inBytes : 0, ok && type === BlkType.Out ? q.outBytes[head]! : 0);
  }
}
