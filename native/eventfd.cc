// eventfds: the kick/call/err notifications of vhost-user and the io_uring completion
// signal. Non-blocking so a read of an idle counter reports 0 instead of stalling.
#include <errno.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "addon.h"
#include "args.h"
#include "eventfd.h"

namespace vhs {

int ReadEventfd(int fd, uint64_t* value) {
  ssize_t n;
  do {
    n = read(fd, value, sizeof(*value));
  } while (n < 0 && errno == EINTR);
  if (n < 0) return errno == EWOULDBLOCK ? EAGAIN : errno;
  return n == sizeof(*value) ? 0 : EINVAL;
}

int WriteEventfd(int fd, uint64_t value) {
  ssize_t n;
  do {
    n = write(fd, &value, sizeof(value));
  } while (n < 0 && errno == EINTR);
  return n < 0 ? (errno == EWOULDBLOCK ? EAGAIN : errno) : 0;
}

namespace {

Napi::Value EventfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  double initval;
  if (!ArgInteger(info, 0, "initval", 0, 4294967295.0, &initval)) return env.Undefined();
  int fd = eventfd(static_cast<unsigned int>(initval), EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) {
    ThrowErrno(env, errno, "eventfd");
    return env.Undefined();
  }
  return Napi::Number::New(env, fd);
}

Napi::Value EventfdRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  uint64_t value = 0;
  int err = ReadEventfd(fd, &value);
  if (err == EAGAIN) return Napi::Number::New(env, 0);
  if (err != 0) {
    ThrowErrno(env, err, "eventfd read");
    return env.Undefined();
  }
  return Napi::Number::New(env, static_cast<double>(value));
}

Napi::Value EventfdWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  uint64_t value;
  if (!ArgFd(info, 0, &fd) || !ArgU64(info, 1, "value", &value)) return env.Undefined();
  int err = WriteEventfd(fd, value);
  if (err != 0) ThrowErrno(env, err, "eventfd write");
  return env.Undefined();
}

}  // namespace

void InitEventfd(Napi::Env env, Napi::Object exports) {
  exports.Set("eventfd", Napi::Function::New(env, EventfdCreate, "eventfd"));
  exports.Set("eventfdRead", Napi::Function::New(env, EventfdRead, "eventfdRead"));
  exports.Set("eventfdWrite", Napi::Function::New(env, EventfdWrite, "eventfdWrite"));
}

}  // namespace vhs
