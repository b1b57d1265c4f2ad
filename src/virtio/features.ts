// Transport-level virtio feature bits (virtio 1.x §6), shared by every device.
export const VIRTIO_RING_F_INDIRECT_DESC = 1n << 28n;
export const VIRTIO_RING_F_EVENT_IDX = 1n << 29n;
export const VIRTIO_F_VERSION_1 = 1n << 32n;

export function hasFeature(features: bigint, bit: bigint): boolean {
  return (features & bit) !== 0n;
}
