// Argument checks shared by every entry point. Each returns false with a JS exception
// pending, so callers can `return` straight away (C++ exceptions are disabled).
#pragma once

#include <napi.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "errors.h"

namespace vhs {

// Largest integer a double holds exactly; every size/offset from JS must fit.
constexpr double kMaxSafeInteger = 9007199254740991.0;

inline bool ArgInteger(const Napi::CallbackInfo& info, size_t i, const char* name, double min,
                       double max, double* out) {
  Napi::Value v = info[i];
  if (!v.IsNumber()) {
    ThrowType(info.Env(), std::string(name) + " must be a number");
    return false;
  }
  double d = v.As<Napi::Number>().DoubleValue();
  // The negated comparison also rejects NaN.
  if (!(d >= min && d <= max) || d != std::trunc(d)) {
    ThrowRange(info.Env(), std::string(name) + " is out of range");
    return false;
  }
  *out = d;
  return true;
}

inline bool ArgFd(const Napi::CallbackInfo& info, size_t i, int* out) {
  double d;
  if (!ArgInteger(info, i, "fd", 0, 2147483647.0, &d)) return false;
  *out = static_cast<int>(d);
  return true;
}

inline bool ArgU64(const Napi::CallbackInfo& info, size_t i, const char* name, uint64_t* out) {
  double d;
  if (!ArgInteger(info, i, name, 0, kMaxSafeInteger, &d)) return false;
  *out = static_cast<uint64_t>(d);
  return true;
}

// File positions: -1 means "the fd's current position" where the syscall supports it.
inline bool ArgPosition(const Napi::CallbackInfo& info, size_t i, int64_t* out) {
  double d;
  if (!ArgInteger(info, i, "position", -1, kMaxSafeInteger, &d)) return false;
  *out = static_cast<int64_t>(d);
  return true;
}

inline bool ArgBool(const Napi::CallbackInfo& info, size_t i, const char* name, bool* out) {
  Napi::Value v = info[i];
  if (!v.IsBoolean()) {
    ThrowType(info.Env(), std::string(name) + " must be a boolean");
    return false;
  }
  *out = v.As<Napi::Boolean>().Value();
  return true;
}

// A byte range [offset, offset+length) of a Uint8Array (Buffer included).
inline bool ArgBytes(const Napi::CallbackInfo& info, size_t i, uint8_t** data, size_t* length) {
  Napi::Value v = info[i];
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    ThrowType(info.Env(), "buf must be a Uint8Array");
    return false;
  }
  Napi::Uint8Array array = v.As<Napi::Uint8Array>();
  uint64_t offset, len;
  if (!ArgU64(info, i + 1, "offset", &offset) || !ArgU64(info, i + 2, "length", &len)) return false;
  if (offset > array.ByteLength() || len > array.ByteLength() - offset) {
    ThrowRange(info.Env(), "offset/length outside the buffer");
    return false;
  }
  *data = array.Data() + offset;
  *length = len;
  return true;
}

}  // namespace vhs
