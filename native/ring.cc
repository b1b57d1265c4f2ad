// Memory ordering for split virtqueues. JS has no fences, and x86 lets a store pass a
// later load, so "publish idx, then read the other side's event/flags" must happen
// here or a notification can be lost for good.
#include <endian.h>
#include <errno.h>
#include <stdint.h>
#include <unistd.h>

#include <cmath>

#include "addon.h"
#include "args.h"
#include "eventfd.h"

namespace vhs {
namespace {

// A u16 inside an ArrayBuffer, aligned so the access is a single atomic operation.
bool RingWord(const Napi::CallbackInfo& info, size_t bufArg, size_t offsetArg, uint16_t** out) {
  Napi::Env env = info.Env();
  if (!info[bufArg].IsArrayBuffer()) {
    ThrowType(env, "ring buffers must be ArrayBuffers");
    return false;
  }
  Napi::ArrayBuffer buffer = info[bufArg].As<Napi::ArrayBuffer>();
  double offset;
  if (!ArgInteger(info, offsetArg, "offset", 0, kMaxSafeInteger, &offset)) return false;
  size_t length = buffer.ByteLength();  // 0 once the mapping was unmapped (detached)
  if (length < 2 || offset > static_cast<double>(length - 2)) {
    ThrowRange(env, "ring offset outside the buffer");
    return false;
  }
  uint8_t* p = static_cast<uint8_t*>(buffer.Data()) + static_cast<size_t>(offset);
  if (reinterpret_cast<uintptr_t>(p) & 1) {
    ThrowRange(env, "ring offset is not 2-byte aligned");
    return false;
  }
  *out = reinterpret_cast<uint16_t*>(p);
  return true;
}

// The operation itself, arguments checked. Sets *notify to whether it notified (or would
// have, with notifyFd -1); returns 0, or the errno of a failed eventfd write.
int PublishAndNotify(uint16_t* idx, uint16_t newIdx, uint16_t oldIdx, uint16_t* ev, bool eventIdx, int notifyFd,
                     bool* notify) {
  __atomic_store_n(idx, htole16(newIdx), __ATOMIC_RELEASE);
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  uint16_t word = le16toh(__atomic_load_n(ev, __ATOMIC_RELAXED));
  if (eventIdx) {
    // vring_need_event(): did [oldIdx, newIdx) cross the index the other side asked for?
    *notify = static_cast<uint16_t>(newIdx - word - 1) < static_cast<uint16_t>(newIdx - oldIdx);
  } else {
    *notify = (word & 1) == 0;  // VRING_USED_F_NO_NOTIFY / VRING_AVAIL_F_NO_INTERRUPT
  }
  if (*notify && notifyFd >= 0) {
    int err = WriteEventfd(notifyFd, 1);
    // EAGAIN means the counter is saturated, so the peer is going to wake anyway.
    if (err != 0 && err != EAGAIN) return err;
  }
  return 0;
}

Napi::Value PublishIdx(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint16_t* idx;
  uint16_t* ev;
  bool eventIdx;
  double notifyFd;
  if (!info[2].IsNumber() || !info[3].IsNumber()) {
    ThrowType(env, "newIdx and oldIdx must be numbers");
    return env.Undefined();
  }
  // Indices are free-running u16 counters; callers may pass them unmasked.
  uint16_t newIdx = static_cast<uint16_t>(info[2].As<Napi::Number>().Int64Value());
  uint16_t oldIdx = static_cast<uint16_t>(info[3].As<Napi::Number>().Int64Value());
  if (!RingWord(info, 0, 1, &idx) || !RingWord(info, 4, 5, &ev) || !ArgBool(info, 6, "eventIdx", &eventIdx) ||
      !ArgInteger(info, 7, "notifyFd", -1, 2147483647.0, &notifyFd)) {
    return env.Undefined();
  }
  bool notify;
  int err = PublishAndNotify(idx, newIdx, oldIdx, ev, eventIdx, static_cast<int>(notifyFd), &notify);
  if (err != 0) ThrowErrno(env, err, "eventfd write");
  return Napi::Boolean::New(env, notify);
}

// The offset argument of a ring word already checked to be a number: as ArgInteger and
// RingWord would accept it (else the caller takes the checked path, which throws).
uint16_t* FastRingWord(void* data, size_t length, double offset) {
  if (!(offset >= 0 && offset <= kMaxSafeInteger) || offset != std::trunc(offset)) return nullptr;
  if (length < 2 || offset > static_cast<double>(length - 2)) return nullptr;
  uint8_t* p = static_cast<uint8_t*>(data) + static_cast<size_t>(offset);
  if (reinterpret_cast<uintptr_t>(p) & 1) return nullptr;
  return reinterpret_cast<uint16_t*>(p);
}

// publishIdx runs once per drained batch on every queue. This entry reads its eight
// arguments with one N-API call each (node-addon-api's CallbackInfo heap-allocates for
// more than six and its accessors query each value several times); anything it would
// not accept as is goes to PublishIdx above, which throws the error.
napi_value PublishIdxFast(napi_env env, napi_callback_info cbinfo) {
  size_t argc = 8;
  napi_value argv[8];
  if (napi_get_cb_info(env, cbinfo, &argc, argv, nullptr, nullptr) != napi_ok) return nullptr;
  void* idxData;
  void* evData;
  size_t idxLength, evLength;
  double idxOffset, evOffset, notifyFd;
  int64_t newIdx, oldIdx;
  bool eventIdx;
  uint16_t* idx = nullptr;
  uint16_t* ev = nullptr;
  napi_valuetype t6;
  bool ok = argc >= 8 && napi_get_arraybuffer_info(env, argv[0], &idxData, &idxLength) == napi_ok &&
            napi_get_value_double(env, argv[1], &idxOffset) == napi_ok &&
            napi_get_value_int64(env, argv[2], &newIdx) == napi_ok &&
            napi_get_value_int64(env, argv[3], &oldIdx) == napi_ok &&
            napi_get_arraybuffer_info(env, argv[4], &evData, &evLength) == napi_ok &&
            napi_get_value_double(env, argv[5], &evOffset) == napi_ok &&
            napi_typeof(env, argv[6], &t6) == napi_ok && t6 == napi_boolean &&
            napi_get_value_bool(env, argv[6], &eventIdx) == napi_ok &&
            napi_get_value_double(env, argv[7], &notifyFd) == napi_ok &&
            notifyFd >= -1 && notifyFd <= 2147483647.0 && notifyFd == std::trunc(notifyFd) &&
            (idx = FastRingWord(idxData, idxLength, idxOffset)) != nullptr &&
            (ev = FastRingWord(evData, evLength, evOffset)) != nullptr;
  if (!ok) {
    Napi::CallbackInfo info(env, cbinfo);
    return PublishIdx(info);
  }
  bool notify;
  int err = PublishAndNotify(idx, static_cast<uint16_t>(newIdx), static_cast<uint16_t>(oldIdx), ev, eventIdx,
                             static_cast<int>(notifyFd), &notify);
  if (err != 0) {
    ThrowErrno(Napi::Env(env), err, "eventfd write");
    return nullptr;
  }
  napi_value result;
  napi_get_boolean(env, notify, &result);
  return result;
}

napi_value FenceFast(napi_env, napi_callback_info) {
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  return nullptr;
}

}  // namespace

void InitRing(Napi::Env env, Napi::Object exports) {
  napi_value fence, publishIdx;
  napi_create_function(env, "fence", NAPI_AUTO_LENGTH, FenceFast, nullptr, &fence);
  napi_create_function(env, "publishIdx", NAPI_AUTO_LENGTH, PublishIdxFast, nullptr, &publishIdx);
  exports.Set("fence", Napi::Value(env, fence));
  exports.Set("publishIdx", Napi::Value(env, publishIdx));
}

}  // namespace vhs
