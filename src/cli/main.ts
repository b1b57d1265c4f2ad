// Command dispatch and the error policy of the command line: configuration errors are
// one line on stderr and exit 2; other failures exit 1 (stack trace only with --debug).
import { readFileSync } from 'node:fs';
import { ConfigError } from '../util/errors.js';
import { describeSchema, schemas, type CommandName } from '../config.js';
import { runBlk } from './blk.js';
import { runServe } from './serve.js';
import { runRun } from './run.js';
import { runBenchBlk } from './bench-blk.js';
import { runFs, runMount } from './fs.js';
import { runBenchFs } from './bench-fs.js';
import { runDoctor } from './doctor.js';
import { runDemo } from './demo.js';
import { runImageCreate, runImageExport, runImageImport, runImageInfo, runImageLs, runImageRm } from './image.js';

interface Command {
  readonly summary: string;
  readonly usage: string;
  readonly run: (argv: string[]) => Promise<void>;
}

const RUN_USAGE = `vhost-s3 run --config exports.json [--shutdown-timeout 30]

exports.json:
  {
    "defaults": { "endpoint": "http://127.0.0.1:9000" },
    "exports": [
      { "type": "blk", "socket": "/run/vhost-s3/vm1-disk.sock", "image": "s3://bkt/images/vm1", "queues": 2 },
      { "type": "fs", "socket": "/run/vhost-s3/vm1-fs.sock", "bucket": "s3://bkt/share", "tag": "data" }
    ]
  }
Every field of an export is a flag of \`vhost-s3 blk\` or \`vhost-s3 fs\` without its dashes
(see their --help); "defaults" go to every export whose type has the field. A top-level
"metrics": "127.0.0.1:9464" serves Prometheus metrics of every export (as --metrics;
docs/metrics.md). SIGHUP re-reads the file and applies the shares' attr/entry/negative/list
timeouts and the cache sizes (cache-size of shares and disks, attr-cache-entries,
list-cache-entries; docs/configuration.md).`;

const commands: Partial<Record<CommandName, Command>> = {
  serve: { summary: 'run the gateway on the embedded default store (what `npm start` runs)', usage: 'vhost-s3 serve [options]', run: runServe },
  run: { summary: 'serve several blk and fs exports from one process, listed in a JSON file (SIGHUP reloads it)', usage: RUN_USAGE, run: runRun },
  blk: { summary: 'serve a disk image over a vhost-user-blk socket', usage: 'vhost-s3 blk --socket PATH --image file:/path/disk.raw [options]', run: runBlk },
  fs: { summary: 'serve a bucket as a virtio-fs device over a vhost-user socket', usage: 'vhost-s3 fs --socket PATH --bucket s3://bucket[/prefix] [--tag data] [options]', run: runFs },
  mount: { summary: 'mount a bucket on the host through /dev/fuse (root)', usage: 'vhost-s3 mount --bucket s3://bucket[/prefix] MOUNTPOINT [options]', run: runMount },
  'image create': { summary: 'create an empty object-backed disk image', usage: 'vhost-s3 image create IMAGE --size 20G [--chunk-size 4M]', run: runImageCreate },
  'image import': { summary: 'copy a raw disk file into a new image (zero chunks are not stored)', usage: 'vhost-s3 image import FILE IMAGE [--chunk-size 4M]', run: runImageImport },
  'image export': { summary: 'copy an image into a sparse raw file', usage: 'vhost-s3 image export IMAGE FILE', run: runImageExport },
  'image info': { summary: 'size, chunk size, chunks and bytes stored, lease holder of an image', usage: 'vhost-s3 image info IMAGE [--json]', run: runImageInfo },
  'image ls': { summary: 'list the images under a prefix', usage: 'vhost-s3 image ls s3://bucket/images/', run: runImageLs },
  'image rm': { summary: 'remove an image and all its chunks', usage: 'vhost-s3 image rm IMAGE [--force]', run: runImageRm },
  demo: { summary: 'boot a Linux guest under QEMU on `vhost-s3 serve` and show the share and the disk from inside it (`npm run demo`)', usage: 'vhost-s3 demo [--data-dir DIR] [--disk-size 64M]', run: runDemo },
  doctor: { summary: 'check the endpoint, credentials, bucket access, clock, /dev/fuse and the socket directory', usage: 'vhost-s3 doctor [--bucket s3://bucket[/prefix]|file:/path] [--socket-dir DIR] [storage options]', run: runDoctor },
  'bench fs': { summary: 'drive a vhost-user-fs backend (vhost-s3 fs, virtiofsd) without a VM and measure it', usage: 'vhost-s3 bench fs --socket PATH --workload create|stat|readdir|seqwrite|seqread|randread [--json]', run: runBenchFs },
  'bench blk': { summary: 'drive a vhost-user-blk backend without a VM and measure it', usage: 'vhost-s3 bench blk --socket PATH [--rw randread] [--bs 4k] [--iodepth 32] [--runtime 10] [--json]', run: runBenchBlk },
};

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

function usage(): string {
  const entries: [string, string][] = [
    ...(Object.entries(commands) as [CommandName, Command][]).map(([name, c]): [string, string] => [name, c.summary]),
    ['config', 'print every option of every command with its environment variable'],
  ];
  // Two spaces past the longest name, so that no name runs into its summary.
  const width = Math.max(...entries.map(([name]) => name.length)) + 2;
  const rows = entries.map(([name, summary]) => `  ${name.padEnd(width)}${summary}`);
  return [
    'usage: vhost-s3 <command> [options]',
    '',
    'commands:',
    ...rows,
    '',
    'Every option can also be given as an environment variable (VHOST_S3_*); flags win.',
    'Run `vhost-s3 <command> --help` for a command\'s options.',
  ].join('\n');
}

function commandHelp(name: CommandName, cmd: Command): string {
  return `usage: ${cmd.usage}\n\n${cmd.summary}\n\noptions:\n${describeSchema(name)}`;
}

/** Splits "bench blk --x" into the longest known command name and its flags. */
function resolveCommand(argv: string[]): { name: CommandName; rest: string[] } | null {
  for (const words of [2, 1]) {
    const name = argv.slice(0, words).join(' ');
    if (argv.length >= words && name in commands) return { name: name as CommandName, rest: argv.slice(words) };
  }
  return null;
}

export async function main(argv: string[]): Promise<void> {
  const debug = argv.includes('--debug') || process.env.VHOST_S3_DEBUG === 'true';
  try {
    if (argv.length === 0 || argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help') {
      process.stdout.write(usage() + '\n');
      return;
    }
    if (argv[0] === '--version') {
      process.stdout.write(version() + '\n');
      return;
    }
    if (argv[0] === 'config') {
      const all = (Object.keys(schemas) as CommandName[]).map((n) => `${n}:\n${describeSchema(n)}`);
      process.stdout.write(all.join('\n\n') + '\n');
      return;
    }
    const found = resolveCommand(argv);
    if (!found) throw new ConfigError(`unknown command "${argv.slice(0, 2).join(' ')}" (see vhost-s3 --help)`);
    const cmd = commands[found.name]!;
    if (found.rest.includes('--help') || found.rest.includes('-h')) {
      process.stdout.write(commandHelp(found.name, cmd) + '\n');
      return;
    }
    await cmd.run(found.rest);
    // Pipes are written asynchronously: let stdout drain before ending the process.
    await new Promise<void>((resolve) => process.stdout.write('', () => resolve()));
    process.exit(process.exitCode ?? 0);
  } catch (err) {
    const e = err as Error;
    process.stderr.write(`vhost-s3: ${e.message.split('\n')[0]}\n`);
    if (debug && e.stack) process.stderr.write(e.stack + '\n');
    process.exit(err instanceof ConfigError ? 2 : 1);
  }
}
