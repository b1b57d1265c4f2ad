// qemu-storage-daemon as the reference vhost-user-blk backend.

import { spawn, type ChildProcess } from 'node:child_process';
import { stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';

import { tail, trackChild } from './exec.js';

export interface QsdBlkOptions {
  /** Raw image file to export. */
  image: string;
  /** Unix socket path to listen on (must not exist). */
  socket: string;
  writable?: boolean;
  numQueues?: number;
  logicalBlockSize?: number;
  /** Open the file with O_DIRECT (cache.direct=on). Default false. */
  direct?: boolean;
  /** Pass guest discards to the file (discard=unmap punches holes) or drop them (QEMU's default, ignore). */
  discard?: 'unmap' | 'ignore';
  /** Binary. Default qemu-storage-daemon. */
  binary?: string;
}

export interface QsdBlk {
  proc: ChildProcess;
  socket: string;
  /** Everything qemu-storage-daemon printed so far. */
  output(): string;
  /** SIGTERM, then SIGKILL after 5 s; resolves when it has exited. */
  stop(): Promise<void>;
}

/** Starts qemu-storage-daemon exporting `image` as vhost-user-blk and waits until the socket exists. */
export async function startQsdBlk(o: QsdBlkOptions): Promise<QsdBlk> {
  const exp = [
    'type=vhost-user-blk',
    'id=exp0',
    'node-name=file0',
    'addr.type=unix',
    `addr.path=${o.socket}`,
    `writable=${o.writable === false ? 'off' : 'on'}`,
  ];
  if (o.numQueues !== undefined) exp.push(`num-queues=${o.numQueues}`);
  if (o.logicalBlockSize !== undefined) exp.push(`logical-block-size=${o.logicalBlockSize}`);
  const args = [
    '--blockdev', `driver=file,node-name=file0,filename=${o.image},cache.direct=${o.direct ? 'on' : 'off'}${o.discard ? `,discard=${o.discard}` : ''}`,
    '--export', exp.join(','),
  ];
  const bin = o.binary ?? 'qemu-storage-daemon';
  const proc = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (b: Buffer) => (out += b.toString()));
  proc.stderr!.on('data', (b: Buffer) => (out += b.toString()));
  let exited = false;
  const exitP = new Promise<void>((res) => proc.on('close', () => { exited = true; res(); }));
  proc.on('error', (e) => { out += `spawn error: ${e.message}\n`; });
  trackChild(proc);

  const qsd: QsdBlk = {
    proc,
    socket: o.socket,
    output: () => out,
    async stop() {
      if (exited) return;
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await exitP;
      clearTimeout(t);
    },
  };

  const deadline = Date.now() + 10_000;
  for (;;) {
    if (exited) throw new Error(`${bin} exited before listening:\n${tail(out, 20)}`);
    try {
      if ((await stat(o.socket)).isSocket()) return qsd;
    } catch {
      /* not yet */
    }
    if (Date.now() > deadline) {
      await qsd.stop();
      throw new Error(`${bin} did not create ${o.socket} within 10 s:\n${tail(out, 20)}`);
    }
    await sleep(50);
  }
}
