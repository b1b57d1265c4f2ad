#include "iovec.h"

#include <errno.h>

#include <cmath>

#include "args.h"
#include "registry.h"

namespace vhs {

bool ArgIovecs(const Napi::CallbackInfo& info, size_t arrayArg, IovecArgs* out) {
  Napi::Env env = info.Env();
  Napi::Value v = info[arrayArg];
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
    ThrowType(env, "iov must be a Float64Array");
    return false;
  }
  Napi::Float64Array array = v.As<Napi::Float64Array>();
  double count;
  if (!ArgInteger(info, arrayArg + 1, "iovCount", 0, kMaxIovecs, &count)) return false;
  if (count * 2 > static_cast<double>(array.ElementLength())) {
    ThrowRange(env, "iovCount exceeds the iov array");
    return false;
  }
  out->pairs = array.Data();
  out->count = static_cast<size_t>(count);
  return true;
}

bool FillIovecs(Napi::Env env, const IovecArgs& args, iovec* out, const char* syscall) {
  for (size_t i = 0; i < args.count; i++) {
    double address = args.pairs[2 * i];
    double length = args.pairs[2 * i + 1];
    if (!(address >= 0 && address <= kMaxSafeInteger && length >= 0 && length <= kMaxSafeInteger) ||
        address != std::trunc(address) || length != std::trunc(length)) {
      ThrowErrno(env, EFAULT, syscall);
      return false;
    }
    out[i].iov_base = reinterpret_cast<void*>(static_cast<uintptr_t>(address));
    out[i].iov_len = static_cast<size_t>(length);
  }
  if (!IovecsMapped(out, args.count)) {
    ThrowErrno(env, EFAULT, syscall);
    return false;
  }
  return true;
}

}  // namespace vhs
