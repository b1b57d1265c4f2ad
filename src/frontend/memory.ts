// The frontend's "guest RAM": one memfd mapped here and shared with the backend as a
// memory region, exactly as QEMU shares memory-backend-memfd. Buffers and rings are
// carved out of it with a bump allocator; guest-physical addresses start at guestBase.
import { native, type Mapping } from '../native/index.js';

export interface SharedBuffer {
  /** Guest-physical address (what descriptors carry). */
  readonly gpa: number;
  /** Frontend virtual address (what SET_VRING_ADDR carries). */
  readonly uva: number;
  readonly bytes: Uint8Array;
}

export interface MemoryRegionInfo {
  readonly fd: number;
  readonly guestAddr: number;
  readonly size: number;
  readonly userAddr: number;
  readonly mmapOffset: number;
}

export class FrontendMemory {
  private next = 0;

  private constructor(
    readonly fd: number,
    readonly size: number,
    readonly guestBase: number,
    private readonly mapping: Mapping,
  ) {}

  /** size must fit one mapping window (1 GiB): plenty for rings and request buffers. */
  static create(size: number, guestBase = 0): FrontendMemory {
    if (size <= 0 || size > native.WINDOW_SIZE || size % 4096 !== 0) {
      throw new RangeError(`frontend memory size must be a multiple of 4096 up to ${native.WINDOW_SIZE}`);
    }
    const fd = native.memfdCreate('vhost-s3-frontend', size);
    try {
      return new FrontendMemory(fd, size, guestBase, native.mmap(fd, 0, size, true));
    } catch (err) {
      native.close(fd);
      throw err;
    }
  }

  get region(): MemoryRegionInfo {
    return { fd: this.fd, guestAddr: this.guestBase, size: this.size, userAddr: this.mapping.address, mmapOffset: 0 };
  }

  get buffer(): ArrayBuffer {
    return this.mapping.windows[0]!;
  }

  get free(): number {
    return this.size - this.next;
  }

  alloc(length: number, align = 64): SharedBuffer {
    const start = Math.ceil(this.next / align) * align;
    if (length < 0 || start + length > this.size) throw new RangeError(`frontend memory exhausted (${length} bytes wanted, ${this.size - start} left)`);
    this.next = start + length;
    return this.at(start, length);
  }

  /** A view of [offset, offset+length) of the region, by offset from its start. */
  at(offset: number, length: number): SharedBuffer {
    return { gpa: this.guestBase + offset, uva: this.mapping.address + offset, bytes: new Uint8Array(this.mapping.windows[0]!, offset, length) };
  }

  close(): void {
    this.mapping.unmap();
    native.close(this.fd);
  }
}
