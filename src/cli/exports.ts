// The exports of a gateway: the devices one process serves. `vhost-s3 run --config FILE`
// reads them from a JSON file (as qemu-storage-daemon takes several --export options);
// `vhost-s3 serve` builds its two in code. Each export is validated exactly as its
// single-device command (`blk`, `fs`) validates its flags — a field of the file is that
// command's flag without the dashes — so an option means the same in both places.
//
//   {
//     "defaults": { "endpoint": "http://127.0.0.1:9000" },
//     "exports": [
//       { "type": "blk", "socket": "/run/vhost-s3/vm1-disk.sock", "image": "s3://bkt/images/vm1", "queues": 2 },
//       { "type": "fs", "socket": "/run/vhost-s3/vm1-fs.sock", "bucket": "s3://bkt/share", "tag": "data" }
//     ]
//   }
import { readFileSync } from 'node:fs';
import { loadConfig, schemas, type ConfigOf, type OptionSpec } from '../config.js';
import { ConfigError } from '../util/errors.js';

export const EXPORT_TYPES = ['blk', 'fs'] as const;
export type ExportType = (typeof EXPORT_TYPES)[number];

export type ExportSpec =
  | { readonly type: 'blk'; readonly config: ConfigOf<'blk'> }
  | { readonly type: 'fs'; readonly config: ConfigOf<'fs'> };

/** Options of the process, not of a device: given to `run` itself. */
const PROCESS_FIELDS = new Set(['log-level', 'debug', 'metrics', 'poll-us']);

/** The fields an export of `type` takes: its command's flags without the dashes. */
export function exportFields(type: ExportType): ReadonlySet<string> {
  return new Set((Object.values(schemas[type]) as OptionSpec[]).map((o) => o.arg).filter((a) => !PROCESS_FIELDS.has(a)));
}

/** A one-line name for logs and errors. */
export function exportName(spec: ExportSpec): string {
  return `${spec.type} ${spec.config.socket}`;
}

/** Checks a single-device configuration beyond its schema: what `blk` and `fs` refuse before opening anything. */
export function checkExport(spec: ExportSpec): void {
  const c = spec.config;
  if (c.socket === '') throw new ConfigError(`no socket given (--socket /run/vm1-${spec.type === 'blk' ? 'disk' : 'fs'}.sock)`);
  if (spec.type === 'blk') {
    if (spec.config.image === '') throw new ConfigError('no image given (--image s3://bucket/images/vm1 or file:/path/disk.raw)');
    const serialBytes = Buffer.byteLength(spec.config.serial);
    if (serialBytes > 20) throw new ConfigError(`--serial is ${serialBytes} bytes long; a virtio-blk serial has at most 20`);
  } else {
    if (spec.config.bucket === '') throw new ConfigError('no bucket given (--bucket s3://bucket[/prefix] or file:/path)');
    for (const [flag, v] of [['file-mode', spec.config.fileMode], ['dir-mode', spec.config.dirMode]] as const) {
      if (!/^0?[0-7]{1,4}$/.test(v)) throw new ConfigError(`--${flag} must be octal permissions such as 0644, got "${v}"`);
    }
  }
}

/** Reads and validates an exports file; every error is one line naming the file and the export. */
export function readExportsFile(path: string): ExportSpec[] {
  return readRunFile(path).exports;
}

/** What an exports file configures: the exports, and the process's own fields ("metrics": "HOST:PORT"). */
export interface RunFile {
  readonly exports: ExportSpec[];
  /** "" when the file does not say. */
  readonly metrics: string;
}

export function readRunFile(path: string): RunFile {
  if (path === '') throw new ConfigError('no configuration file given (--config exports.json)');
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`${path}: not valid JSON: ${(err as Error).message.split('\n')[0]}`);
  }
  const exports = parseExports(doc, path);
  const metrics = (doc as Record<string, unknown>).metrics ?? '';
  if (typeof metrics !== 'string') throw new ConfigError(`${path}: "metrics" must be a string such as "127.0.0.1:9464"`);
  return { exports, metrics };
}

/** Validates the document of an exports file (`where` names it in errors). */
export function parseExports(doc: unknown, where: string): ExportSpec[] {
  if (!isObject(doc)) throw new ConfigError(`${where}: expected a JSON object with "exports": [...]`);
  for (const k of Object.keys(doc)) {
    if (k !== 'exports' && k !== 'defaults' && k !== 'metrics') throw new ConfigError(`${where}: unknown field "${k}" (expected "exports" and optionally "defaults" and "metrics")`);
  }
  const defaults = doc.defaults ?? {};
  if (!isObject(defaults)) throw new ConfigError(`${where}: "defaults" must be an object of export fields`);
  const anyType = new Set([...exportFields('blk'), ...exportFields('fs')]);
  for (const k of Object.keys(defaults)) {
    if (k === 'type' || k === 'socket' || !anyType.has(k)) throw new ConfigError(`${where}: defaults: "${k}" is not a field that exports share`);
  }
  const list = doc.exports;
  if (!Array.isArray(list) || list.length === 0) throw new ConfigError(`${where}: "exports" must be a non-empty array`);
  const specs = list.map((entry: unknown, i) => parseExport(entry, defaults, `${where}: exports[${i}]`));
  const seen = new Map<string, number>();
  specs.forEach((s, i) => {
    const first = seen.get(s.config.socket);
    if (first !== undefined) throw new ConfigError(`${where}: exports[${i}]: socket ${s.config.socket} is also used by exports[${first}]`);
    seen.set(s.config.socket, i);
  });
  return specs;
}

function parseExport(entry: unknown, defaults: Record<string, unknown>, where: string): ExportSpec {
  if (!isObject(entry)) throw new ConfigError(`${where}: expected an object with "type", "socket" and the device's fields`);
  const type = entry.type;
  if (type !== 'blk' && type !== 'fs') throw new ConfigError(`${where}: "type" must be ${EXPORT_TYPES.map((t) => `"${t}"`).join(' or ')}`);
  const fields = exportFields(type);
  const at = `${where} (${type})`;
  for (const k of Object.keys(entry)) {
    if (k !== 'type' && !fields.has(k)) throw new ConfigError(`${at}: unknown field "${k}" (a ${type} export takes the options of vhost-s3 ${type}: ${[...fields].join(', ')})`);
  }
  // Defaults apply where the type has the field (e.g. "cache-size" to both, "tag" to fs only).
  const values: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(defaults)) if (fields.has(k)) values[k] = v;
  Object.assign(values, entry);
  delete values.type;
  const argv: string[] = [];
  for (const [k, v] of Object.entries(values)) {
    if (typeof v !== 'string' && typeof v !== 'number' && typeof v !== 'boolean') throw new ConfigError(`${at}: "${k}" must be a string, a number or true/false`);
    argv.push(`--${k}=${String(v)}`);
  }
  try {
    // The file alone configures an export: VHOST_S3_* variables are for the single-device commands.
    const spec = (type === 'blk' ? { type, config: loadConfig('blk', argv, {}) } : { type, config: loadConfig('fs', argv, {}) }) as ExportSpec;
    checkExport(spec);
    return spec;
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    throw new ConfigError(`${at}: ${asField(err.message)}`);
  }
}

/** The command line's "--queues (VHOST_S3_QUEUES): must be …" said of a field of the file. */
function asField(message: string): string {
  return message.replace(/^option --([a-z0-9-]+)/, '"$1"').replace(/--([a-z0-9-]+)(?: \(VHOST_S3_[A-Z0-9_]+\))?/g, '"$1"');
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The QEMU -chardev/-device pair that attaches an export (`id` names the chardev). */
export function qemuDeviceArgs(spec: ExportSpec, id: string): string[] {
  const chardev = ['-chardev', `socket,id=${id},path=${spec.config.socket}`];
  if (spec.type === 'blk') return [...chardev, '-device', `vhost-user-blk-pci,chardev=${id}${spec.config.queues > 1 ? `,num-queues=${spec.config.queues}` : ''}`];
  return [...chardev, '-device', `vhost-user-fs-pci,chardev=${id},tag=${spec.config.tag}${spec.config.queues > 1 ? `,num-request-queues=${spec.config.queues}` : ''}`];
}

/** The shared guest memory every vhost-user device needs. */
export const QEMU_MEMORY_ARGS: readonly string[] = ['-object', 'memory-backend-memfd,id=mem,size=1G,share=on', '-numa', 'node,memdev=mem', '-m', '1G'];

