// iovec arrays from JS: a Float64Array packed [address, length, address, length, ...].
#pragma once

#include <napi.h>
#include <sys/uio.h>

namespace vhs {

// Linux's UIO_MAXIOV; more is EINVAL from the kernel anyway.
constexpr size_t kMaxIovecs = 1024;

struct IovecArgs {
  const double* pairs;
  size_t count;
};

// Reads info[arrayArg] (the Float64Array) and info[arrayArg + 1] (iovCount).
bool ArgIovecs(const Napi::CallbackInfo& info, size_t arrayArg, IovecArgs* out);

// Converts to struct iovec in out[0..count) and checks every range against the live
// mappings; throws EFAULT if one is outside them.
bool FillIovecs(Napi::Env env, const IovecArgs& args, iovec* out, const char* syscall);

}  // namespace vhs
