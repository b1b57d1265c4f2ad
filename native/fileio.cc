// Synchronous vectored file I/O straight into mapped guest memory, for the paths where
// a blocking syscall on the event loop is acceptable (page-cache hits, setup, tests)
// and a Buffer copy is not; and syncfs(2) on the thread pool (Node has no call for it).
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "addon.h"
#include "args.h"
#include "iovec.h"

namespace vhs {
namespace {

template <bool kWrite>
Napi::Value Vectored(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* name = kWrite ? "pwritev" : "preadv";
  int fd;
  IovecArgs args;
  int64_t position;
  if (!ArgFd(info, 0, &fd) || !ArgIovecs(info, 1, &args) || !ArgPosition(info, 3, &position)) {
    return env.Undefined();
  }
  iovec iov[kMaxIovecs];
  if (!FillIovecs(env, args, iov, name)) return env.Undefined();
  int count = static_cast<int>(args.count);
  ssize_t n;
  do {
    // The *2 variants accept position -1 (use and advance the file position).
    n = kWrite ? pwritev2(fd, iov, count, position, 0) : preadv2(fd, iov, count, position, 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    ThrowErrno(env, errno, name);
    return env.Undefined();
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

Napi::Value Fdatasync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  int r;
  do {
    r = fdatasync(fd);
  } while (r < 0 && errno == EINTR);
  if (r < 0) ThrowErrno(env, errno, "fdatasync");
  return env.Undefined();
}

Napi::Value Fallocate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  double mode;
  uint64_t offset, length;
  if (!ArgFd(info, 0, &fd) || !ArgInteger(info, 1, "mode", 0, 2147483647.0, &mode) ||
      !ArgU64(info, 2, "offset", &offset) || !ArgU64(info, 3, "length", &length)) {
    return env.Undefined();
  }
  int r;
  do {
    r = fallocate(fd, static_cast<int>(mode), static_cast<off_t>(offset), static_cast<off_t>(length));
  } while (r < 0 && errno == EINTR);
  if (r < 0) ThrowErrno(env, errno, "fallocate");
  return env.Undefined();
}

// syncfs(2) on libuv's thread pool: it writes back a whole file system (seconds on a busy
// disk), so never on the event loop. done(err) runs on the loop with 0 or a positive errno;
// the caller keeps `fd` open until then.
class SyncfsWorker : public Napi::AsyncWorker {
 public:
  SyncfsWorker(const Napi::Function& done, int fd) : Napi::AsyncWorker(done, "vhost-s3:syncfs"), fd_(fd) {}

  void Execute() override {
    int r;
    do {
      r = ::syncfs(fd_);
    } while (r < 0 && errno == EINTR);
    err_ = r < 0 ? errno : 0;
  }

  void OnOK() override {
    Napi::HandleScope scope(Env());
    Callback().Call({Napi::Number::New(Env(), err_)});
  }

 private:
  int fd_;
  int err_ = 0;
};

Napi::Value Syncfs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  if (info.Length() < 2 || !info[1].IsFunction()) {
    ThrowType(env, "syncfs: done must be a function");
    return env.Undefined();
  }
  (new SyncfsWorker(info[1].As<Napi::Function>(), fd))->Queue();  // deletes itself once done ran
  return env.Undefined();
}

// isFile(path, dev, ino): whether stat(path) names that file (device and inode number);
// false when it does not or stat fails. A held-open reader's per-READ "is this still the
// object?" check: one syscall, no Stats object (fs.statSync builds one, with four Dates).
Napi::Value IsFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsString() || !info[1].IsNumber() || !info[2].IsNumber()) {
    ThrowType(env, "isFile(path, dev, ino)");
    return env.Undefined();
  }
  // One byte more than the kernel takes (PATH_MAX with its NUL), so that a truncated copy
  // is told from a path of the largest size allowed.
  char path[PATH_MAX + 1];
  size_t len = 0;
  if (napi_get_value_string_utf8(env, info[0], path, sizeof(path), &len) != napi_ok) return env.Undefined();
  // PATH_MAX bytes or more: stat would fail with ENAMETOOLONG.
  if (len >= PATH_MAX) return Napi::Boolean::New(env, false);
  struct stat st;
  if (stat(path, &st) != 0) return Napi::Boolean::New(env, false);
  double dev = info[1].As<Napi::Number>().DoubleValue();
  double ino = info[2].As<Napi::Number>().DoubleValue();
  return Napi::Boolean::New(env, static_cast<double>(st.st_dev) == dev && static_cast<double>(st.st_ino) == ino);
}

}  // namespace

void InitFileIo(Napi::Env env, Napi::Object exports) {
  exports.Set("preadv", Napi::Function::New(env, Vectored<false>, "preadv"));
  exports.Set("pwritev", Napi::Function::New(env, Vectored<true>, "pwritev"));
  exports.Set("fdatasync", Napi::Function::New(env, Fdatasync, "fdatasync"));
  exports.Set("fallocate", Napi::Function::New(env, Fallocate, "fallocate"));
  exports.Set("syncfs", Napi::Function::New(env, Syncfs, "syncfs"));
  exports.Set("isFile", Napi::Function::New(env, IsFile, "isFile"));
}

}  // namespace vhs
