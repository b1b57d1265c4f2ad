// uv_poll watchers that call back into JS on the event-loop thread, so sockets,
// kick eventfds and the io_uring completion eventfd share Node's single epoll.
#include "poller.h"

#include <errno.h>
#include <stdint.h>
#include <uv.h>

#include <memory>
#include <mutex>
#include <unordered_set>

#include "addon.h"
#include "args.h"
#include "eventfd.h"

namespace vhs {

namespace {
std::mutex polledMutex;
std::unordered_set<int> polledFds;
}  // namespace

void MarkPolled(int fd) {
  std::lock_guard<std::mutex> lock(polledMutex);
  polledFds.insert(fd);
}

void UnmarkPolled(int fd) {
  std::lock_guard<std::mutex> lock(polledMutex);
  polledFds.erase(fd);
}

bool IsPolled(int fd) {
  std::lock_guard<std::mutex> lock(polledMutex);
  return polledFds.count(fd) != 0;
}

namespace {

class Poller;

// Lives apart from the JS wrapper because libuv owns it until uv_close's callback:
// the wrapper may be garbage-collected before that.
struct PollHandle {
  uv_poll_t uv;
  Poller* owner;
};

void FreeHandle(uv_handle_t* h) { delete static_cast<PollHandle*>(h->data); }

class Poller : public Napi::ObjectWrap<Poller> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Poller",
                       {InstanceMethod<&Poller::Start>("start"), InstanceMethod<&Poller::Stop>("stop"),
                        InstanceMethod<&Poller::Close>("close")});
  }

  explicit Poller(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Poller>(info), env_(info.Env()) {
    Napi::Env env = info.Env();
    if (!ArgFd(info, 0, &fd_)) return;
    if (!info[1].IsFunction()) {
      ThrowType(env, "callback must be a function");
      return;
    }
    if (!info[2].IsUndefined() && !ArgBool(info, 2, "readEventfd", &readEventfd_)) return;
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok) {
      ThrowErrno(env, EINVAL, "napi_get_uv_event_loop");
      return;
    }
    auto handle = std::make_unique<PollHandle>();
    int r = uv_poll_init(loop, &handle->uv, fd_);
    if (r < 0) {
      ThrowErrno(env, -r, "uv_poll_init");
      return;
    }
    handle_ = handle.release();
    handle_->uv.data = handle_;
    handle_->owner = this;
    MarkPolled(fd_);
    info.This().As<Napi::Object>().DefineProperty(
        Napi::PropertyDescriptor::Value(CallbackKey(env), info[1], napi_writable));
    // The property above is what keeps the callback alive (and, being an edge of the
    // wrapper, lets the pair be collected together). This weak reference only spares
    // each wake-up a property lookup: it cannot outlive the property's hold on the
    // function while the wrapper exists, and Close() drops both.
    callback_ = Napi::Weak(info[1].As<Napi::Function>());
    async_ = std::make_unique<Napi::AsyncContext>(env, "vhost-s3:Poller");
  }

  ~Poller() override {
    // Being finalized means nothing holds the wrapper: no reference left to drop.
    active_ = false;
    CloseHandle();
  }

 private:
  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    double events;
    if (!ArgInteger(info, 0, "events", 1, UV_READABLE | UV_WRITABLE, &events)) return env.Undefined();
    if (handle_ == nullptr) {
      ThrowErrno(env, EBADF, "uv_poll_start (poller is closed)");
      return env.Undefined();
    }
    int r = uv_poll_start(&handle_->uv, static_cast<int>(events), OnPoll);
    if (r < 0) {
      ThrowErrno(env, -r, "uv_poll_start");
      return env.Undefined();
    }
    // An active watcher must keep its JS object (and so its callback) alive, the way
    // Node keeps an active socket alive with no JS reference to it.
    if (!active_) {
      active_ = true;
      Ref();
    }
    return env.Undefined();
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    if (handle_ != nullptr) uv_poll_stop(&handle_->uv);
    Deactivate();
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    CloseHandle();
    callback_.Reset();
    Value().Set(CallbackKey(info.Env()), info.Env().Undefined());  // let the closure go
    return info.Env().Undefined();
  }

  void Deactivate() {
    if (active_) {
      active_ = false;
      Unref();
    }
  }

  void CloseHandle() {
    if (handle_ == nullptr) return;
    handle_->owner = nullptr;
    // uv_close takes the fd out of epoll now; the memory goes in the close callback.
    uv_close(reinterpret_cast<uv_handle_t*>(&handle_->uv), FreeHandle);
    handle_ = nullptr;
    UnmarkPolled(fd_);
    Deactivate();
  }

  // Runs once per wake-up of every kick, call and socket fd: kept to the few N-API calls
  // it needs (one handle scope, two reference reads, two small integers, the call).
  static void OnPoll(uv_poll_t* uv, int status, int events) {
    Poller* self = static_cast<PollHandle*>(uv->data)->owner;
    if (self == nullptr) return;
    // Reset the counter here rather than by a JS call back into the addon from the
    // callback: one crossing fewer per kick.
    // EAGAIN (a wake-up with the counter already read) is not a failure.
    if (self->readEventfd_ && status == 0 && (events & UV_READABLE) != 0) {
      uint64_t value;
      int err = ReadEventfd(self->fd_, &value);
      if (err != 0 && err != EAGAIN) status = -err;
    }
    napi_env env = self->env_;
    Napi::HandleScope scope(env);
    // Holding the receiver in this scope keeps the wrapper alive even if the callback
    // closes the poller and drops the last reference.
    napi_value receiver = self->Value();
    napi_value fn = self->callback_.Value();
    if (fn == nullptr) return;
    napi_value args[2];
    if (napi_create_int32(env, status, &args[0]) != napi_ok || napi_create_int32(env, events, &args[1]) != napi_ok) {
      return;
    }
    // MakeCallback rather than Call: it runs process.nextTick and promise jobs queued by
    // the callback, as for Node's own I/O callbacks.
    napi_status s = napi_make_callback(env, *self->async_, receiver, fn, 2, args, nullptr);
    bool pending = false;
    if (s != napi_ok && napi_is_exception_pending(env, &pending) == napi_ok && pending) {
      // Without this an exception thrown by the callback would be silently dropped.
      napi_value error;
      if (napi_get_and_clear_last_exception(env, &error) == napi_ok) napi_fatal_exception(env, error);
    }
  }

  Napi::Env env_;
  int fd_ = -1;
  bool readEventfd_ = false;
  Napi::FunctionReference callback_;
  PollHandle* handle_ = nullptr;
  bool active_ = false;
  std::unique_ptr<Napi::AsyncContext> async_;
};

Napi::Value CreatePoller(const Napi::CallbackInfo& info) {
  return GetAddonData(info.Env())->pollerClass.New({info[0], info[1], info[2]});
}

}  // namespace

void InitPoller(Napi::Env env, Napi::Object exports) {
  GetAddonData(env)->pollerClass = Napi::Persistent(Poller::Define(env));
  exports.Set("createPoller", Napi::Function::New(env, CreatePoller, "createPoller"));
}

}  // namespace vhs
