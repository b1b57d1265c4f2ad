// The object-backed disk image format (DESIGN.md, "The object-backed disk image"):
//   <image>/manifest.json          {format, version, size, chunkSize, uuid, createdAt}
//   <image>/chunks/<16 hex digits> chunk N; a missing chunk reads as zeros
//   <image>/lease                  the single writer's lease (image-lease.ts)
import { randomUUID } from 'node:crypto';
import { ErrnoError } from '../util/errors.js';

export const IMAGE_FORMAT = 'vhost-s3-image';
export const IMAGE_VERSION = 1;
export const DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024;
export const MIN_CHUNK_SIZE = 64 * 1024;
export const MAX_CHUNK_SIZE = 64 * 1024 * 1024;

export interface ImageManifest {
  readonly format: typeof IMAGE_FORMAT;
  readonly version: number;
  /** Bytes, a multiple of 512. */
  readonly size: number;
  /** Bytes, a power of two between 64 KiB and 64 MiB. */
  readonly chunkSize: number;
  readonly uuid: string;
  readonly createdAt: string;
}

/** Key names of one image, relative to the store: `prefix` ends with '/' (or is empty). */
export class ImageKeys {
  constructor(readonly prefix: string) {}
  get manifest(): string {
    return `${this.prefix}manifest.json`;
  }
  get lease(): string {
    return `${this.prefix}lease`;
  }
  get chunksPrefix(): string {
    return `${this.prefix}chunks/`;
  }
  chunk(index: number): string {
    return `${this.prefix}chunks/${index.toString(16).padStart(16, '0')}`;
  }
  /** The chunk index of a key under chunksPrefix, or -1 for anything else. */
  chunkIndex(key: string): number {
    const hex = key.slice(this.chunksPrefix.length);
    return key.startsWith(this.chunksPrefix) && /^[0-9a-f]{16}$/.test(hex) ? parseInt(hex, 16) : -1;
  }
}

export function validateGeometry(size: number, chunkSize: number): void {
  if (!Number.isSafeInteger(size) || size <= 0 || size % 512 !== 0) {
    throw new ErrnoError('EINVAL', `image size must be a positive multiple of 512 bytes, got ${size}`);
  }
  if (!Number.isSafeInteger(chunkSize) || chunkSize < MIN_CHUNK_SIZE || chunkSize > MAX_CHUNK_SIZE || (chunkSize & (chunkSize - 1)) !== 0) {
    throw new ErrnoError('EINVAL', `chunk size must be a power of two between 64K and 64M, got ${chunkSize}`);
  }
}

export function newManifest(size: number, chunkSize = DEFAULT_CHUNK_SIZE): ImageManifest {
  validateGeometry(size, chunkSize);
  return { format: IMAGE_FORMAT, version: IMAGE_VERSION, size, chunkSize, uuid: randomUUID(), createdAt: new Date().toISOString() };
}

export function encodeManifest(m: ImageManifest): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(m, null, 2) + '\n');
}

/** Parses and checks a manifest; unknown versions and malformed fields are EINVAL with a clear message. */
export function decodeManifest(bytes: Uint8Array, where: string): ImageManifest {
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    throw new ErrnoError('EINVAL', `${where}: manifest is not JSON`);
  }
  const m = raw as Partial<Record<keyof ImageManifest, unknown>>;
  if (typeof raw !== 'object' || raw === null || m.format !== IMAGE_FORMAT) {
    throw new ErrnoError('EINVAL', `${where}: not a vhost-s3 image manifest`);
  }
  if (m.version !== IMAGE_VERSION) {
    throw new ErrnoError('EINVAL', `${where}: image format version ${String(m.version)} is not supported (this vhost-s3 reads version ${IMAGE_VERSION})`);
  }
  if (typeof m.size !== 'number' || typeof m.chunkSize !== 'number' || typeof m.uuid !== 'string' || typeof m.createdAt !== 'string') {
    throw new ErrnoError('EINVAL', `${where}: manifest is missing size, chunkSize, uuid or createdAt`);
  }
  validateGeometry(m.size, m.chunkSize);
  return { format: IMAGE_FORMAT, version: m.version, size: m.size, chunkSize: m.chunkSize, uuid: m.uuid, createdAt: m.createdAt };
}
