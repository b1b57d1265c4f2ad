// Generic fd operations.
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "addon.h"
#include "args.h"
#include "poller.h"

namespace vhs {
namespace {

Napi::Value Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  if (IsPolled(fd)) {
    ThrowErrno(env, EBUSY, "close (a Poller still watches this fd; close the Poller first)");
    return env.Undefined();
  }
  // No EINTR retry: Linux has released the fd even when close() reports EINTR, and a
  // retry could close a number another thread just reused.
  if (close(fd) < 0 && errno != EINTR) {
    ThrowErrno(env, errno, "close");
  }
  return env.Undefined();
}

Napi::Value Dup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) {
    ThrowErrno(env, errno, "dup");
    return env.Undefined();
  }
  return Napi::Number::New(env, copy);
}

}  // namespace

void InitFd(Napi::Env env, Napi::Object exports) {
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("dup", Napi::Function::New(env, Dup, "dup"));
}

}  // namespace vhs
