// /dev/fuse: open the device, mount a FUSE file system on it (root: the mount(2)
// syscall directly; the mount options say which fd serves it), unmount, and move whole
// requests and replies in and out. Which requests to read and what to answer is decided
// in TypeScript (src/fuse/).
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/uio.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "addon.h"
#include "args.h"

namespace vhs {
namespace {

Napi::Value FuseOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    ThrowErrno(env, errno, "open /dev/fuse");
    return env.Undefined();
  }
  return Napi::Number::New(env, fd);
}

bool ArgString(const Napi::CallbackInfo& info, size_t i, const char* name, std::string* out) {
  if (!info[i].IsString()) {
    ThrowType(info.Env(), std::string(name) + " must be a string");
    return false;
  }
  *out = info[i].As<Napi::String>().Utf8Value();
  if (out->find('\0') != std::string::npos) {
    ThrowType(info.Env(), std::string(name) + " must not contain NUL");
    return false;
  }
  return true;
}

// mount(source, target, type, flags, data): the caller builds the FUSE option string
// ("fd=N,rootmode=40000,user_id=0,group_id=0,...").
Napi::Value Mount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string source, target, type, data;
  double flags;
  if (!ArgString(info, 0, "source", &source) || !ArgString(info, 1, "target", &target) ||
      !ArgString(info, 2, "type", &type) || !ArgInteger(info, 3, "flags", 0, 4294967295.0, &flags) ||
      !ArgString(info, 4, "data", &data)) {
    return env.Undefined();
  }
  if (mount(source.c_str(), target.c_str(), type.c_str(), static_cast<unsigned long>(flags), data.c_str()) < 0) {
    ThrowErrno(env, errno, "mount");
  }
  return env.Undefined();
}

Napi::Value Umount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string target;
  double flags;
  if (!ArgString(info, 0, "target", &target) || !ArgInteger(info, 1, "flags", 0, 2147483647.0, &flags)) {
    return env.Undefined();
  }
  if (umount2(target.c_str(), static_cast<int>(flags)) < 0) ThrowErrno(env, errno, "umount2");
  return env.Undefined();
}

// read(fd, buf): /dev/fuse hands out exactly one request per read. Returns the bytes
// read, or -1 when nothing is pending (EAGAIN); ENODEV means the file system was unmounted.
Napi::Value ReadFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  if (!info[1].IsTypedArray()) {
    ThrowType(env, "buf must be a Uint8Array");
    return env.Undefined();
  }
  Napi::Uint8Array buf = info[1].As<Napi::Uint8Array>();
  for (;;) {
    ssize_t n = read(fd, buf.Data(), buf.ByteLength());
    if (n >= 0) return Napi::Number::New(env, static_cast<double>(n));
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return Napi::Number::New(env, -1);
    ThrowErrno(env, errno, "read");
    return env.Undefined();
  }
}

// writev(fd, [buf, ...]): one reply in one system call, as /dev/fuse requires.
Napi::Value WritevFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  if (!info[1].IsArray()) {
    ThrowType(env, "bufs must be an array of Uint8Array");
    return env.Undefined();
  }
  Napi::Array bufs = info[1].As<Napi::Array>();
  if (bufs.Length() > 1024) {
    ThrowRange(env, "too many buffers");
    return env.Undefined();
  }
  std::vector<struct iovec> iov(bufs.Length());
  for (uint32_t i = 0; i < bufs.Length(); i++) {
    Napi::Value v = bufs[i];
    if (!v.IsTypedArray()) {
      ThrowType(env, "bufs must be an array of Uint8Array");
      return env.Undefined();
    }
    Napi::Uint8Array b = v.As<Napi::Uint8Array>();
    iov[i].iov_base = b.Data();
    iov[i].iov_len = b.ByteLength();
  }
  for (;;) {
    ssize_t n = writev(fd, iov.data(), static_cast<int>(iov.size()));
    if (n >= 0) return Napi::Number::New(env, static_cast<double>(n));
    if (errno == EINTR) continue;
    ThrowErrno(env, errno, "writev");
    return env.Undefined();
  }
}

// FUSE passthrough (Linux 6.9+): the device ioctls of <linux/fuse.h>, defined here because
// Debian 12's headers predate them.
struct BackingMap {
  int32_t fd;
  uint32_t flags;
  uint64_t padding;
};
constexpr unsigned long kBackingOpen = _IOW(229, 1, BackingMap);
constexpr unsigned long kBackingClose = _IOW(229, 2, uint32_t);

// fuseBackingOpen(devFd, fd): registers `fd` as a backing file of the connection and
// returns its id (for fuse_open_out.backing_id). The kernel holds its own reference: the
// caller may close `fd` at once. Needs CAP_SYS_ADMIN and a connection that negotiated
// FUSE_PASSTHROUGH (EPERM otherwise).
Napi::Value FuseBackingOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int dev, fd;
  if (!ArgFd(info, 0, &dev) || !ArgFd(info, 1, &fd)) return env.Undefined();
  BackingMap map = {fd, 0, 0};
  int id = ioctl(dev, kBackingOpen, &map);
  if (id < 0) {
    ThrowErrno(env, errno, "FUSE_DEV_IOC_BACKING_OPEN");
    return env.Undefined();
  }
  return Napi::Number::New(env, id);
}

// fuseBackingClose(devFd, id): drops the connection's reference to a backing file (files
// still open on it keep theirs).
Napi::Value FuseBackingClose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int dev;
  double id;
  if (!ArgFd(info, 0, &dev) || !ArgInteger(info, 1, "id", 0, 2147483647.0, &id)) return env.Undefined();
  uint32_t backing = static_cast<uint32_t>(id);
  if (ioctl(dev, kBackingClose, &backing) < 0) ThrowErrno(env, errno, "FUSE_DEV_IOC_BACKING_CLOSE");
  return env.Undefined();
}

}  // namespace

void InitFuseDev(Napi::Env env, Napi::Object exports) {
  exports.Set("fuseOpen", Napi::Function::New(env, FuseOpen, "fuseOpen"));
  exports.Set("mount", Napi::Function::New(env, Mount, "mount"));
  exports.Set("umount", Napi::Function::New(env, Umount, "umount"));
  exports.Set("readFd", Napi::Function::New(env, ReadFd, "readFd"));
  exports.Set("writevFd", Napi::Function::New(env, WritevFd, "writevFd"));
  exports.Set("fuseBackingOpen", Napi::Function::New(env, FuseBackingOpen, "fuseBackingOpen"));
  exports.Set("fuseBackingClose", Napi::Function::New(env, FuseBackingClose, "fuseBackingClose"));
}

}  // namespace vhs
