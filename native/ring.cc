// Memory ordering for split virtqueues. JS has no fences, and x86 lets a store pass a
// later load, so "publish idx, then read the other side's event/flags" must happen
// here or a notification can be lost for good.
#include <endian.h>
#include <errno.h>
#include <stdint.h>
#include <unistd.h>

#include "addon.h"
#include "args.h"

namespace vhs {
namespace {

Napi::Value Fence(const Napi::CallbackInfo& info) {
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  return info.Env().Undefined();
}

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
  __atomic_store_n(idx, htole16(newIdx), __ATOMIC_RELEASE);
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  uint16_t word = le16toh(__atomic_load_n(ev, __ATOMIC_RELAXED));
  bool notify;
  if (eventIdx) {
    // vring_need_event(): did [oldIdx, newIdx) cross the index the other side asked for?
    notify = static_cast<uint16_t>(newIdx - word - 1) < static_cast<uint16_t>(newIdx - oldIdx);
  } else {
    notify = (word & 1) == 0;  // VRING_USED_F_NO_NOTIFY / VRING_AVAIL_F_NO_INTERRUPT
  }
  if (notify && notifyFd >= 0) {
    uint64_t one = 1;
    ssize_t n;
    do {
      n = write(static_cast<int>(notifyFd), &one, sizeof(one));
    } while (n < 0 && errno == EINTR);
    // EAGAIN means the counter is saturated, so the peer is going to wake anyway.
    if (n < 0 && errno != EAGAIN) ThrowErrno(env, errno, "eventfd write");
  }
  return Napi::Boolean::New(env, notify);
}

}  // namespace

void InitRing(Napi::Env env, Napi::Object exports) {
  exports.Set("fence", Napi::Function::New(env, Fence, "fence"));
  exports.Set("publishIdx", Napi::Function::New(env, PublishIdx, "publishIdx"));
}

}  // namespace vhs
