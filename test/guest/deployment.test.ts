// docs/deployment.md's QEMU command line, run: `vhost-s3 fs` and `vhost-s3 blk` start
// with nothing but the variables of deploy/systemd/{fs-data,blk-vm1}.env.example (as
// the systemd units start them; only the bucket, endpoint, credentials and socket paths
// are pointed at this test's s3rver and directory), and a real Linux guest boots with the
// documented memory, machine, CPU count and device options. Only the accelerator, the CPU
// model and the OS disk are the test guest's own; any other option in the documented
// command fails the test until this file knows what to do with it. The guest uses the
// share and the disk; the host then finds their writes in the bucket.
import { expect } from 'chai';
import { readFileSync } from 'node:fs';

import { bootGuest, GuestError, useGuestBucket } from '../support/guest/index.js';
import { CliProcess, runCli } from '../support/cli.js';
import { documentedCommand, parseEnvFile, qemuOptions, repoFile } from '../support/deploy.js';

const BUCKET = 'bkt';
/** What the examples name, and what this test serves instead. */
const EXAMPLE_BUCKET = 's3://my-bucket/';

describe('guest: the deployment documents, run (docs/deployment.md QEMU line, deploy/systemd env files)', function () {
  this.timeout(300_000);
  const fx = useGuestBucket({ bucket: BUCKET, tmpPrefix: 'vhost-s3-guest-deploy-' });

  /** An example env file with the store and socket pointed at this test's. */
  function exampleEnv(file: string, socket: string): Record<string, string> {
    const env = parseEnvFile(repoFile(`deploy/systemd/${file}`));
    for (const k of ['VHOST_S3_BUCKET', 'VHOST_S3_IMAGE']) if (env[k] !== undefined) env[k] = env[k]!.replace(EXAMPLE_BUCKET, `s3://${BUCKET}/`);
    return { ...env, ...fx.s3.env, VHOST_S3_SOCKET: socket };
  }

  it('the documented QEMU options attach both devices served as the units serve them', async () => {
    const fsEnv = exampleEnv('fs-data.env.example', fx.dir.file('fs-data.sock'));
    const blkEnv = exampleEnv('blk-vm1.env.example', fx.dir.file('blk-vm1.sock'));
    const docSockets = new Map([
      [parseEnvFile(repoFile('deploy/systemd/fs-data.env.example')).VHOST_S3_SOCKET!, fsEnv.VHOST_S3_SOCKET!],
      [parseEnvFile(repoFile('deploy/systemd/blk-vm1.env.example')).VHOST_S3_SOCKET!, blkEnv.VHOST_S3_SOCKET!],
    ]);

    // The documented command, option by option.
    const words = documentedCommand('qemu-system-x86_64');
    expect(words[0]).to.equal('qemu-system-x86_64');
    const memoryArgs: string[] = [];
    const qemuArgs: string[] = [];
    const replaced: string[] = [];
    let socketsUsed = 0;
    let cpus = 1;
    for (const [opt, value] of qemuOptions(words.slice(1))) {
      switch (opt) {
        case '-m':
        case '-object':
        case '-numa':
          memoryArgs.push(opt, value);
          break;
        case '-chardev': {
          const path = /(?:^|,)path=([^,]+)/.exec(value)?.[1];
          const ours = path === undefined ? undefined : docSockets.get(path);
          if (ours === undefined) throw new Error(`documented -chardev ${value} names no socket of deploy/systemd/*.env.example`);
          socketsUsed++;
          qemuArgs.push(opt, value.replace(`path=${path}`, `path=${ours}`));
          break;
        }
        case '-device':
        case '-machine':
          qemuArgs.push(opt, value);
          break;
        case '-smp': // through the harness's own -smp
          cpus = Number(value);
          break;
        case '-accel': // TCG here, KVM in the document
        case '-cpu': // `host` needs KVM
        case '-drive': // the VM's own OS disk
          replaced.push(opt);
          break;
        default:
          throw new Error(`the documented QEMU command has ${opt} ${value}, which this test does not know how to run`);
      }
    }
    expect(socketsUsed).to.equal(2);
    expect(memoryArgs.join(' ')).to.match(/memory-backend-memfd,id=mem,size=\S+,share=on/).and.include('-numa node,memdev=mem');
    expect(qemuArgs.join(' ')).to.include('vhost-user-fs-pci').and.include('vhost-user-blk-pci');

    // The devices, started like the systemd units: the command alone, configured by the environment.
    await fx.store.put('data/hello.txt', new TextEncoder().encode('hello from the bucket\n'));
    const created = await runCli(['image', 'create', blkEnv.VHOST_S3_IMAGE!, '--size', '64M'], { env: { ...fx.s3.env } });
    expect(created.code, created.stderr).to.equal(0);
    for (const [command, env] of [['fs', fsEnv], ['blk', blkEnv]] as const) {
      const p = new CliProcess([command], { env });
      fx.procs.push(p);
      await p.waitForSocket(env.VHOST_S3_SOCKET!);
    }

    const tag = fsEnv.VHOST_S3_TAG!;
    const script = [
      'wait_for /dev/vda 20 || { result disk missing; exit 1; }',
      'result disk_size "$(blockdev --getsize64 /dev/vda)"',
      'result disk_queues "$(ls /sys/block/vda/mq | wc -l)"',
      'result disk_serial "$(cat /sys/block/vda/serial)"',
      'printf VHS3-DEPLOY | dd of=/dev/vda bs=512 seek=8 conv=sync,notrunc oflag=direct status=none && result disk_write ok',
      'result disk_read "$(dd if=/dev/vda bs=512 skip=8 count=1 iflag=direct status=none | head -c 11)"',
      `mkdir -p /mnt/data && mount -t virtiofs ${tag} /mnt/data && result mount ok || exit 1`,
      'result hello "$(cat /mnt/data/hello.txt)"',
      'echo "from the documented guest" > /mnt/data/guest.txt && sync && result write ok',
      'umount /mnt/data && result umount ok',
    ].join('\n');
    // Linux uses min(num-queues, CPUs) queues of a virtio-blk disk: the documented CPU count shows them all.
    const boot = await bootGuest({ script, memoryArgs, qemuArgs, cpus, timeoutMs: 200_000 });
    const want = {
      disk_size: String(64 << 20), disk_queues: blkEnv.VHOST_S3_QUEUES, disk_serial: blkEnv.VHOST_S3_SERIAL, disk_write: 'ok', disk_read: 'VHS3-DEPLOY',
      mount: 'ok', hello: 'hello from the bucket', write: 'ok', umount: 'ok',
    };
    const got = Object.fromEntries(Object.keys(want).map((k) => [k, boot.results[k]]));
    if (JSON.stringify(got) !== JSON.stringify(want) || boot.exitCode !== 0) {
      throw new GuestError(`want ${JSON.stringify(want)}, got ${JSON.stringify(got)} (exit ${boot.exitCode}; replaced ${replaced.join(' ')})`, boot.output, '');
    }

    // Stopped as systemd stops them (SIGTERM): the writes are in the bucket.
    for (const p of fx.procs) expect((await p.stop('SIGTERM')).code, p.describe()).to.equal(0);
    expect(new TextDecoder().decode((await fx.store.get('data/guest.txt')).body)).to.equal('from the documented guest\n');
    const raw = fx.dir.file('vm1.raw');
    const exported = await runCli(['image', 'export', blkEnv.VHOST_S3_IMAGE!, raw], { env: { ...fx.s3.env } });
    expect(exported.code, exported.stderr).to.equal(0);
    expect(readFileSync(raw).subarray(8 * 512, 8 * 512 + 11).toString()).to.equal('VHS3-DEPLOY');
  });
});
