// virtio-blk wire constants (virtio 1.x §5.2, linux/virtio_blk.h).
export const VIRTIO_BLK_F_SIZE_MAX = 1n << 1n;
export const VIRTIO_BLK_F_SEG_MAX = 1n << 2n;
export const VIRTIO_BLK_F_RO = 1n << 5n;
export const VIRTIO_BLK_F_BLK_SIZE = 1n << 6n;
export const VIRTIO_BLK_F_FLUSH = 1n << 9n;
export const VIRTIO_BLK_F_TOPOLOGY = 1n << 10n;
export const VIRTIO_BLK_F_MQ = 1n << 12n;
export const VIRTIO_BLK_F_DISCARD = 1n << 13n;
export const VIRTIO_BLK_F_WRITE_ZEROES = 1n << 14n;

export const enum BlkType {
  In = 0,
  Out = 1,
  Flush = 4,
  GetId = 8,
  Discard = 11,
  WriteZeroes = 13,
}

export const enum BlkStatus {
  Ok = 0,
  IoErr = 1,
  Unsupp = 2,
}

export const SECTOR_SIZE = 512;
export const SECTOR_SHIFT = 9;
/** struct virtio_blk_outhdr */
export const OUTHDR_SIZE = 16;
/** struct virtio_blk_discard_write_zeroes */
export const DISCARD_SEGMENT_SIZE = 16;
export const WRITE_ZEROES_FLAG_UNMAP = 1;
export const ID_BYTES = 20;
/** struct virtio_blk_config up to write_zeroes_may_unmap + padding. */
export const CONFIG_SIZE = 60;
