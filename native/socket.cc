// Unix stream sockets and SCM_RIGHTS fd passing for the vhost-user channel. Every fd
// is non-blocking and close-on-exec: the event loop must never block in a syscall and
// fds must not leak into spawned children (QEMU, helpers).
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <vector>

#include "addon.h"
#include "args.h"

namespace vhs {
namespace {

// The kernel refuses more than SCM_MAX_FD fds per message.
constexpr size_t kMaxFds = 253;

bool MakeAddress(Napi::Env env, Napi::Value v, sockaddr_un* addr, socklen_t* len) {
  if (!v.IsString()) {
    ThrowType(env, "path must be a string");
    return false;
  }
  std::string path = v.As<Napi::String>().Utf8Value();
  memset(addr, 0, sizeof(*addr));
  addr->sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr->sun_path) || path.find('\0') != std::string::npos) {
    ThrowErrno(env, path.empty() ? ENOENT : ENAMETOOLONG, "bind/connect");
    return false;
  }
  memcpy(addr->sun_path, path.data(), path.size());
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
  return true;
}

Napi::Value UnixListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  sockaddr_un addr;
  socklen_t len;
  double backlog;
  if (!MakeAddress(env, info[0], &addr, &len)) return env.Undefined();
  if (!ArgInteger(info, 1, "backlog", 0, 65535, &backlog)) return env.Undefined();
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ThrowErrno(env, errno, "socket");
    return env.Undefined();
  }
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), len) < 0) {
    int err = errno;
    close(fd);
    ThrowErrno(env, err, "bind");
    return env.Undefined();
  }
  if (listen(fd, static_cast<int>(backlog)) < 0) {
    int err = errno;
    close(fd);
    ThrowErrno(env, err, "listen");
    return env.Undefined();
  }
  return Napi::Number::New(env, fd);
}

Napi::Value UnixAccept(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  for (;;) {
    int conn = accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (conn >= 0) return Napi::Number::New(env, conn);
    // A connection that died in the backlog is not the listener's failure: try the next.
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(env, -1);
    ThrowErrno(env, errno, "accept4");
    return env.Undefined();
  }
}

Napi::Value UnixConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  sockaddr_un addr;
  socklen_t len;
  if (!MakeAddress(env, info[0], &addr, &len)) return env.Undefined();
  // Blocking connect: a Unix-socket connect only waits while the listener's backlog is
  // full, and the frontend cannot do anything useful before it is connected.
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ThrowErrno(env, errno, "socket");
    return env.Undefined();
  }
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), len) < 0) {
    int err = errno;
    if (err == EINTR) {
      // The connect continues in the background; wait for it and collect its result.
      pollfd p = {fd, POLLOUT, 0};
      while (poll(&p, 1, -1) < 0 && errno == EINTR) {
      }
      socklen_t errLen = sizeof(err);
      if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &errLen) < 0) err = errno;
    }
    if (err != 0) {
      close(fd);
      ThrowErrno(env, err, "connect");
      return env.Undefined();
    }
  }
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    int err = errno;
    close(fd);
    ThrowErrno(env, err, "fcntl");
    return env.Undefined();
  }
  return Napi::Number::New(env, fd);
}

Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) < 0) {
    ThrowErrno(env, errno, "socketpair");
    return env.Undefined();
  }
  Napi::Array pair = Napi::Array::New(env, 2);
  pair.Set(0u, Napi::Number::New(env, fds[0]));
  pair.Set(1u, Napi::Number::New(env, fds[1]));
  return pair;
}

// Closes every fd carried by the control messages of msg.
void CloseReceivedFds(msghdr* msg) {
  for (cmsghdr* c = CMSG_FIRSTHDR(msg); c != nullptr; c = CMSG_NXTHDR(msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char* p = CMSG_DATA(c);
    for (size_t i = 0; i < n; i++) {
      int fd;
      memcpy(&fd, p + i * sizeof(int), sizeof(int));
      close(fd);
    }
  }
}

Napi::Value RecvMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  uint8_t* data;
  size_t length;
  double maxFdsD;
  if (!ArgFd(info, 0, &fd) || !ArgBytes(info, 1, &data, &length) ||
      !ArgInteger(info, 4, "maxFds", 0, kMaxFds, &maxFdsD)) {
    return env.Undefined();
  }
  size_t maxFds = static_cast<size_t>(maxFdsD);
  // cmsghdr alignment matters to the CMSG_* macros, hence the union.
  union {
    cmsghdr align;
    unsigned char bytes[CMSG_SPACE(kMaxFds * sizeof(int))];
  } control;
  iovec iov = {data, length};
  msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (maxFds > 0) {
    msg.msg_control = control.bytes;
    msg.msg_controllen = CMSG_SPACE(maxFds * sizeof(int));
  }
  ssize_t n;
  do {
    n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return env.Null();
    ThrowErrno(env, errno, "recvmsg");
    return env.Undefined();
  }
  if (msg.msg_flags & MSG_CTRUNC) {
    // The kernel already closed what did not fit; close what did, so a peer cannot make
    // us leak fds by sending more than the protocol allows.
    CloseReceivedFds(&msg);
    ThrowErrno(env, EMSGSIZE, "recvmsg");
    return env.Undefined();
  }
  Napi::Array fds = Napi::Array::New(env);
  uint32_t count = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char* p = CMSG_DATA(c);
    for (size_t i = 0; i < k; i++) {
      int received;
      memcpy(&received, p + i * sizeof(int), sizeof(int));
      fds.Set(count++, Napi::Number::New(env, received));
    }
  }
  Napi::Object result = Napi::Object::New(env);
  result.Set("bytes", Napi::Number::New(env, static_cast<double>(n)));
  result.Set("fds", fds);
  return result;
}

Napi::Value SendMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  uint8_t* data;
  size_t length;
  if (!ArgFd(info, 0, &fd) || !ArgBytes(info, 1, &data, &length)) return env.Undefined();
  if (!info[4].IsArray()) {
    ThrowType(env, "fds must be an array");
    return env.Undefined();
  }
  Napi::Array fdArray = info[4].As<Napi::Array>();
  uint32_t nfds = fdArray.Length();
  if (nfds > kMaxFds) {
    ThrowErrno(env, EINVAL, "sendmsg");
    return env.Undefined();
  }
  union {
    cmsghdr align;
    unsigned char bytes[CMSG_SPACE(kMaxFds * sizeof(int))];
  } control;
  iovec iov = {data, length};
  msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (nfds > 0) {
    memset(control.bytes, 0, CMSG_SPACE(nfds * sizeof(int)));
    msg.msg_control = control.bytes;
    msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    unsigned char* p = CMSG_DATA(c);
    for (uint32_t i = 0; i < nfds; i++) {
      Napi::Value v = fdArray.Get(i);
      double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
      if (!(d >= 0 && d <= 2147483647.0) || d != std::trunc(d)) {
        ThrowRange(env, "fds must hold non-negative integers");
        return env.Undefined();
      }
      int passed = static_cast<int>(d);
      memcpy(p + i * sizeof(int), &passed, sizeof(int));
    }
  }
  ssize_t n;
  do {
    // MSG_NOSIGNAL: a vanished peer is an EPIPE to report, not a signal to die of.
    n = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(env, -1);
    ThrowErrno(env, errno, "sendmsg");
    return env.Undefined();
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

}  // namespace

void InitSocket(Napi::Env env, Napi::Object exports) {
  exports.Set("unixListen", Napi::Function::New(env, UnixListen, "unixListen"));
  exports.Set("unixAccept", Napi::Function::New(env, UnixAccept, "unixAccept"));
  exports.Set("unixConnect", Napi::Function::New(env, UnixConnect, "unixConnect"));
  exports.Set("socketPair", Napi::Function::New(env, SocketPair, "socketPair"));
  exports.Set("recvMsg", Napi::Function::New(env, RecvMsg, "recvMsg"));
  exports.Set("sendMsg", Napi::Function::New(env, SendMsg, "sendMsg"));
}

}  // namespace vhs
