// vhost-user protocol constants (QEMU docs/interop/vhost-user.rst). Numbers only; the
// wire layout lives in codec.ts and the behaviour in the session classes.

/** Size of the message header: u32 request, u32 flags, u32 size (native endian = LE here). */
export const HEADER_SIZE = 12;

// Header flags.
export const VHOST_USER_VERSION = 0x1;
export const VHOST_USER_VERSION_MASK = 0x3;
export const VHOST_USER_REPLY_MASK = 0x4;
export const VHOST_USER_NEED_REPLY_MASK = 0x8;

/** Requests sent by the frontend on the main socket. */
export const FrontendReq = {
  NONE: 0,
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  CREATE_CRYPTO_SESSION: 26,
  CLOSE_CRYPTO_SESSION: 27,
  POSTCOPY_ADVISE: 28,
  POSTCOPY_LISTEN: 29,
  POSTCOPY_END: 30,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  GPU_SET_SOCKET: 33,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
  GET_SHARED_OBJECT: 41,
  SET_DEVICE_STATE_FD: 42,
  CHECK_DEVICE_STATE: 43,
} as const;
export type FrontendReqName = keyof typeof FrontendReq;

/** Requests sent by the backend on the backend channel (SET_BACKEND_REQ_FD). */
export const BackendReq = {
  NONE: 0,
  IOTLB_MSG: 1,
  CONFIG_CHANGE_MSG: 2,
  VRING_HOST_NOTIFIER_MSG: 3,
  VRING_CALL: 4,
  VRING_ERR: 5,
  SHARED_OBJECT_ADD: 6,
  SHARED_OBJECT_REMOVE: 7,
  SHARED_OBJECT_LOOKUP: 8,
} as const;
export type BackendReqName = keyof typeof BackendReq;

const FRONTEND_NAMES = new Map<number, string>(Object.entries(FrontendReq).map(([k, v]) => [v, k]));
const BACKEND_NAMES = new Map<number, string>(Object.entries(BackendReq).map(([k, v]) => [v, k]));

/** Name of a frontend request for logs ("SET_VRING_NUM", or "UNKNOWN(99)"). */
export function requestName(request: number): string {
  return FRONTEND_NAMES.get(request) ?? `UNKNOWN(${request})`;
}
export function backendRequestName(request: number): string {
  return BACKEND_NAMES.get(request) ?? `UNKNOWN(${request})`;
}

/**
 * Frontend requests whose reply is part of the protocol (not the REPLY_ACK u64): the
 * backend always answers them, whatever the NEED_REPLY flag says.
 */
export const REQUESTS_WITH_REPLY: ReadonlySet<number> = new Set<number>([
  FrontendReq.GET_FEATURES,
  FrontendReq.GET_PROTOCOL_FEATURES,
  FrontendReq.GET_VRING_BASE,
  FrontendReq.GET_QUEUE_NUM,
  FrontendReq.GET_CONFIG,
  FrontendReq.GET_INFLIGHT_FD,
  FrontendReq.GET_MAX_MEM_SLOTS,
  FrontendReq.GET_STATUS,
  FrontendReq.GET_SHARED_OBJECT,
  FrontendReq.CHECK_DEVICE_STATE,
  FrontendReq.SET_DEVICE_STATE_FD,
  FrontendReq.POSTCOPY_ADVISE,
  FrontendReq.POSTCOPY_LISTEN,
  FrontendReq.POSTCOPY_END,
  FrontendReq.CREATE_CRYPTO_SESSION,
]);

/** Virtio feature bit the backend adds to GET_FEATURES: protocol features are supported. */
export const VHOST_USER_F_PROTOCOL_FEATURES = 1n << 30n;
/** VHOST_F_LOG_ALL (dirty logging for migration); not offered. */
export const VHOST_F_LOG_ALL = 1n << 26n;

/** Protocol feature bits (GET/SET_PROTOCOL_FEATURES), as bit masks. */
export const ProtocolFeature = {
  MQ: 1n << 0n,
  LOG_SHMFD: 1n << 1n,
  RARP: 1n << 2n,
  REPLY_ACK: 1n << 3n,
  NET_MTU: 1n << 4n,
  BACKEND_REQ: 1n << 5n,
  CROSS_ENDIAN: 1n << 6n,
  CRYPTO_SESSION: 1n << 7n,
  PAGEFAULT: 1n << 8n,
  CONFIG: 1n << 9n,
  BACKEND_SEND_FD: 1n << 10n,
  HOST_NOTIFIER: 1n << 11n,
  INFLIGHT_SHMFD: 1n << 12n,
  RESET_DEVICE: 1n << 13n,
  INBAND_NOTIFICATIONS: 1n << 14n,
  CONFIGURE_MEM_SLOTS: 1n << 15n,
  STATUS: 1n << 16n,
  XEN_MMAP: 1n << 17n,
  SHARED_OBJECT: 1n << 18n,
  DEVICE_STATE: 1n << 19n,
} as const;

/** Names of the set protocol feature bits, for logs. */
export function protocolFeatureNames(features: bigint): string[] {
  const out: string[] = [];
  for (const [name, bit] of Object.entries(ProtocolFeature)) if ((features & bit) !== 0n) out.push(name);
  return out;
}

// SET_VRING_KICK / CALL / ERR u64 payload.
export const VHOST_USER_VRING_IDX_MASK = 0xff;
export const VHOST_USER_VRING_NOFD_MASK = 0x100;

/** SET_VRING_ADDR flags: VHOST_VRING_F_LOG (log used-ring writes); we never log. */
export const VHOST_VRING_F_LOG = 0x1;

/** Memory regions a SET_MEM_TABLE message may carry (VHOST_MEMORY_BASELINE_NREGIONS). */
export const MEM_TABLE_MAX_REGIONS = 8;
/** fds one message may carry (the SET_MEM_TABLE maximum). */
export const MAX_FDS_PER_MESSAGE = 8;
/** Largest config space a GET/SET_CONFIG may address (VHOST_USER_MAX_CONFIG_SIZE). */
export const MAX_CONFIG_SIZE = 256;
/** SET_CONFIG flags. */
export const VHOST_SET_CONFIG_TYPE_FRONTEND = 0;
export const VHOST_SET_CONFIG_TYPE_MIGRATION = 1;

/**
 * Largest payload the stream reader accepts. Every known payload is far smaller (the
 * biggest, SET_MEM_TABLE and GET_CONFIG, are under 300 bytes); a larger size field means
 * a broken or hostile peer and closes the connection.
 */
export const MAX_PAYLOAD_SIZE = 4096;

/** Largest split-ring size (virtio 1.x). */
export const MAX_VRING_SIZE = 32768;
