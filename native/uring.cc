// io_uring for block I/O without libuv's thread-pool hand-offs: requests are prepared
// and submitted in batches from JS, and completions come back through one eventfd
// watched by the event loop, drained completely and delivered to JS once per batch.
#ifndef VHS_HAVE_LIBURING
// Built where liburing-dev is not installed (binding.gyp looks for liburing.h):
// createUring answers null, as on a kernel without io_uring, and the callers use
// synchronous I/O. Everything works; only the io_uring engine is missing.
#include "addon.h"

namespace vhs {

void InitUring(Napi::Env env, Napi::Object exports) {
  exports.Set("createUring", Napi::Function::New(
                                 env, [](const Napi::CallbackInfo& info) -> Napi::Value { return info.Env().Null(); },
                                 "createUring"));
}

}  // namespace vhs
#else
#include <errno.h>
#include <liburing.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <uv.h>

#include <memory>
#include <vector>

#include "addon.h"
#include "args.h"
#include "eventfd.h"
#include "iovec.h"

namespace vhs {
namespace {

struct RingDeleter {
  void operator()(io_uring* ring) const {
    io_uring_queue_exit(ring);
    delete ring;
  }
};
using RingPtr = std::unique_ptr<io_uring, RingDeleter>;

// The CQ is sized so that every request slot can be in flight at once: the CQ can
// then never overflow, and no completion waits in the kernel's overflow list.
constexpr unsigned kCqPerSqEntry = 4;
constexpr unsigned kMaxEntries = 4096;

// Per-request native state. The iovec array lives here, not in JS memory, because the
// kernel reads it after prep (at submit, or later in an io-wq worker) while JS reuses
// its Float64Array for the next request.
struct Slot {
  double tag = 0;
  std::vector<iovec> iov;
};

class Uring;

struct CompletionPoll {
  uv_poll_t uv;
  Uring* owner;
};

void FreePoll(uv_handle_t* h) { delete static_cast<CompletionPoll*>(h->data); }

class Uring : public Napi::ObjectWrap<Uring> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Uring",
                       {
                           InstanceMethod<&Uring::PrepVectored<false>>("prepReadv"),
                           InstanceMethod<&Uring::PrepVectored<true>>("prepWritev"),
                           InstanceMethod<&Uring::PrepFdatasync>("prepFdatasync"),
                           InstanceMethod<&Uring::PrepFallocate>("prepFallocate"),
                           InstanceMethod<&Uring::Submit>("submit"),
                           InstanceAccessor<&Uring::SqSpace>("sqSpace"),
                           InstanceMethod<&Uring::Close>("close"),
                       });
  }

  explicit Uring(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Uring>(info), env_(info.Env()) {
    Napi::Env env = info.Env();
    if (!info[0].IsExternal() || !info[1].IsFunction()) {
      ThrowType(env, "Uring objects are created by native.createUring()");
      return;
    }
    ring_ = std::move(*info[0].As<Napi::External<RingPtr>>().Data());
    unsigned slots = ring_->cq.ring_entries;
    slots_.resize(slots);
    freeSlots_.reserve(slots);
    for (unsigned i = slots; i > 0; i--) freeSlots_.push_back(i - 1);

    efd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd_ < 0) {
      ThrowErrno(env, errno, "eventfd");
      return;
    }
    int r = io_uring_register_eventfd(ring_.get(), efd_);
    if (r < 0) {
      ThrowErrno(env, -r, "io_uring_register_eventfd");
      return;
    }
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok) {
      ThrowErrno(env, EINVAL, "napi_get_uv_event_loop");
      return;
    }
    auto poll = std::make_unique<CompletionPoll>();
    r = uv_poll_init(loop, &poll->uv, efd_);
    if (r < 0) {
      ThrowErrno(env, -r, "uv_poll_init");
      return;
    }
    poll_ = poll.release();
    poll_->uv.data = poll_;
    poll_->owner = this;
    uv_poll_start(&poll_->uv, UV_READABLE, OnReadable);
    // An idle ring must not keep the process alive; Activate() refs it while busy.
    uv_unref(reinterpret_cast<uv_handle_t*>(&poll_->uv));

    tags_ = Napi::Persistent(Napi::Float64Array::New(env, slots));
    results_ = Napi::Persistent(Napi::Int32Array::New(env, slots));
    info.This().As<Napi::Object>().DefineProperty(
        Napi::PropertyDescriptor::Value(CallbackKey(env), info[1], napi_writable));
    // What each completion batch calls, without a property lookup: weak, the property
    // above owns the function (as in Poller); Close() drops both.
    callback_ = Napi::Weak(info[1].As<Napi::Function>());
    async_ = std::make_unique<Napi::AsyncContext>(env, "vhost-s3:Uring");
  }

  ~Uring() override {
    // Finalized means unreferenced: there is no JS reference left to drop.
    busy_ = 0;
    Shutdown();
  }

 private:
  bool CheckOpen(Napi::Env env, const char* what) {
    if (ring_) return true;
    ThrowErrno(env, EBADF, what);
    return false;
  }

  bool ArgTag(const Napi::CallbackInfo& info, size_t i, double* tag) {
    if (!info[i].IsNumber()) {
      ThrowType(info.Env(), "tag must be a number");
      return false;
    }
    *tag = info[i].As<Napi::Number>().DoubleValue();
    return true;
  }

  // Takes an SQE and the top free slot for a request, or throws EAGAIN leaving both
  // as they were. The caller preps the SQE, then tags it with the slot.
  io_uring_sqe* TakeSqe(Napi::Env env, double tag, const char* what, uint32_t* slotOut) {
    io_uring_sqe* sqe = io_uring_get_sqe(ring_.get());
    if (sqe == nullptr) {
      ThrowErrno(env, EAGAIN, what);
      return nullptr;
    }
    uint32_t slot = freeSlots_.back();
    freeSlots_.pop_back();
    slots_[slot].tag = tag;
    *slotOut = slot;
    if (busy_++ == 0) Activate();
    return sqe;
  }

  bool HaveSlot(Napi::Env env, const char* what) {
    if (!freeSlots_.empty()) return true;
    ThrowErrno(env, EAGAIN, what);
    return false;
  }

  template <bool kWrite>
  Napi::Value PrepVectored(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const char* what = kWrite ? "io_uring prepWritev" : "io_uring prepReadv";
    int fd;
    IovecArgs args;
    int64_t position;
    double tag;
    bool async = false;
    if (!CheckOpen(env, what) || !ArgFd(info, 0, &fd) || !ArgIovecs(info, 1, &args) ||
        !ArgPosition(info, 3, &position) || !ArgTag(info, 4, &tag) ||
        (info.Length() > 5 && !info[5].IsUndefined() && !ArgBool(info, 5, "async", &async)) || !HaveSlot(env, what)) {
      return env.Undefined();
    }
    // Filled before the slot is taken so a bad iovec leaves the slot free.
    std::vector<iovec>& iov = slots_[freeSlots_.back()].iov;
    iov.resize(args.count);
    if (!FillIovecs(env, args, iov.data(), what)) return env.Undefined();
    uint32_t slot;
    io_uring_sqe* sqe = TakeSqe(env, tag, what, &slot);
    if (sqe == nullptr) return env.Undefined();
    // offset -1 (all ones) tells the kernel to use and advance the file position.
    if (kWrite) {
      io_uring_prep_writev(sqe, fd, iov.data(), static_cast<unsigned>(args.count), static_cast<uint64_t>(position));
    } else {
      io_uring_prep_readv(sqe, fd, iov.data(), static_cast<unsigned>(args.count), static_cast<uint64_t>(position));
    }
    // IOSQE_ASYNC: skip the inline attempt at submit and go straight to an io-wq worker,
    // so a large page-cache copy runs on another CPU instead of the event-loop thread.
    if (async) sqe->flags |= IOSQE_ASYNC;
    io_uring_sqe_set_data64(sqe, slot);
    return env.Undefined();
  }

  Napi::Value PrepFdatasync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const char* what = "io_uring prepFdatasync";
    int fd;
    double tag;
    if (!CheckOpen(env, what) || !ArgFd(info, 0, &fd) || !ArgTag(info, 1, &tag) || !HaveSlot(env, what)) {
      return env.Undefined();
    }
    uint32_t slot;
    io_uring_sqe* sqe = TakeSqe(env, tag, what, &slot);
    if (sqe == nullptr) return env.Undefined();
    io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
    io_uring_sqe_set_data64(sqe, slot);
    return env.Undefined();
  }

  Napi::Value PrepFallocate(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const char* what = "io_uring prepFallocate";
    int fd;
    double mode, tag;
    uint64_t offset, length;
    if (!CheckOpen(env, what) || !ArgFd(info, 0, &fd) || !ArgInteger(info, 1, "mode", 0, 2147483647.0, &mode) ||
        !ArgU64(info, 2, "offset", &offset) || !ArgU64(info, 3, "length", &length) || !ArgTag(info, 4, &tag) ||
        !HaveSlot(env, what)) {
      return env.Undefined();
    }
    uint32_t slot;
    io_uring_sqe* sqe = TakeSqe(env, tag, what, &slot);
    if (sqe == nullptr) return env.Undefined();
    io_uring_prep_fallocate(sqe, fd, static_cast<int>(mode), static_cast<off_t>(offset), static_cast<off_t>(length));
    io_uring_sqe_set_data64(sqe, slot);
    return env.Undefined();
  }

  // submit(reap = false). With reap, completions that are ready once io_uring_enter
  // returns (page-cache hits complete inline) are delivered to onComplete before submit
  // returns, and the completion eventfd is muted meanwhile, so such a batch costs no
  // event-loop wake-up: one syscall instead of enter + epoll + eventfd read.
  Napi::Value Submit(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    bool reap = false;
    if (!CheckOpen(env, "io_uring_submit") ||
        (info.Length() > 0 && !info[0].IsUndefined() && !ArgBool(info, 0, "reap", &reap))) {
      return env.Undefined();
    }
    io_uring* ring = ring_.get();
    // Completions posted while muted signal nothing, so everything posted before the
    // eventfd is unmuted must be drained after it: Drain() below, or the drain loop
    // this call is nested in (which runs until the CQ is empty).
    if (reap) io_uring_cq_eventfd_toggle(ring, false);
    int r;
    do {
      r = io_uring_submit(ring);
    } while (r == -EINTR);
    if (reap) io_uring_cq_eventfd_toggle(ring, true);
    if (r < 0) {
      if (reap && io_uring_cq_ready(ring) > 0) Kick();
      ThrowErrno(env, -r, "io_uring_submit");
      return env.Undefined();
    }
    inflight_ += static_cast<unsigned>(r);
    if (reap && !draining_) Drain(env, false);
    if (env.IsExceptionPending()) return env.Undefined();
    return Napi::Number::New(env, r);
  }

  Napi::Value SqSpace(const Napi::CallbackInfo& info) {
    unsigned space = 0;
    if (ring_) {
      space = io_uring_sq_space_left(ring_.get());
      if (freeSlots_.size() < space) space = static_cast<unsigned>(freeSlots_.size());
    }
    return Napi::Number::New(info.Env(), space);
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Shutdown();
    callback_.Reset();
    Value().Set(CallbackKey(info.Env()), info.Env().Undefined());  // let the closure go
    return info.Env().Undefined();
  }

  // A busy ring keeps the loop (poll handle) and its JS object (callback) alive, like
  // a pending fs request does; prepared-but-unsubmitted requests count as busy.
  void Activate() {
    uv_ref(reinterpret_cast<uv_handle_t*>(&poll_->uv));
    Ref();
  }

  void Release(uint32_t slot) {
    freeSlots_.push_back(slot);
    if (--busy_ == 0) {
      uv_unref(reinterpret_cast<uv_handle_t*>(&poll_->uv));
      Unref();
    }
  }

  void Shutdown() {
    if (poll_ != nullptr) {
      poll_->owner = nullptr;
      uv_close(reinterpret_cast<uv_handle_t*>(&poll_->uv), FreePoll);
      poll_ = nullptr;
    }
    if (ring_) {
      // Submitted requests may still be writing into guest memory that JS will unmap
      // once the ring is closed, so wait for them; their results are dropped.
      while (inflight_ > 0) {
        io_uring_cqe* cqe;
        int r = io_uring_wait_cqe(ring_.get(), &cqe);
        if (r == -EINTR) continue;
        if (r < 0) break;
        io_uring_cqe_seen(ring_.get(), cqe);
        inflight_--;
      }
      ring_.reset();  // unsubmitted SQEs are dropped here
    }
    if (efd_ >= 0) {
      close(efd_);
      efd_ = -1;
    }
    if (busy_ > 0) {
      busy_ = 0;
      Unref();
    }
    inflight_ = 0;
  }

  // Signals our own completion eventfd so that the event loop drains the CQ (used when
  // completions may be left in the CQ without a signal of their own).
  void Kick() {
    // An error is EAGAIN: the counter is saturated, a wake-up is pending anyway.
    if (efd_ >= 0) (void)WriteEventfd(efd_, 1);
  }

  // Delivers every completion in the CQ to onComplete, in batches of up to `capacity`.
  // From the event loop (fromLoop) through MakeCallback, with an exception going to
  // 'uncaughtException'; from submit(true) through a plain call, with an exception
  // left pending for the JS caller (and the event loop kicked for what remains).
  // Never nested: a submit(true) made by onComplete only submits, and this loop picks
  // up its completions.
  void Drain(Napi::Env env, bool fromLoop) {
    Napi::HandleScope scope(env);
    // Keeps the wrapper alive if the callback closes the ring and drops it.
    Napi::Object receiver = Value();
    draining_ = true;
    while (ring_) {
      Napi::HandleScope batchScope(env);
      Napi::Float64Array tags = tags_.Value();
      Napi::Int32Array results = results_.Value();
      size_t capacity = slots_.size();
      // JS may have transferred the arrays' buffers away; never write to a stale pointer.
      if (tags.ElementLength() < capacity || results.ElementLength() < capacity) {
        tags = Napi::Float64Array::New(env, capacity);
        results = Napi::Int32Array::New(env, capacity);
        tags_ = Napi::Persistent(tags);
        results_ = Napi::Persistent(results);
      }
      double* tagData = tags.Data();
      int32_t* resultData = results.Data();
      io_uring* ring = ring_.get();
      unsigned count = 0;
      unsigned head;
      io_uring_cqe* cqe;
      io_uring_for_each_cqe(ring, head, cqe) {
        if (count == capacity) break;
        uint64_t slot = cqe->user_data;
        if (slot >= slots_.size()) continue;  // cannot happen: every SQE carries a slot
        tagData[count] = slots_[slot].tag;
        resultData[count] = cqe->res;
        count++;
        Release(static_cast<uint32_t>(slot));
      }
      io_uring_cq_advance(ring, count);
      inflight_ -= count;
      if (count == 0) break;
      Napi::Function fn = callback_.Value();
      if (fn.IsEmpty()) continue;  // closed: results are dropped
      napi_value args[3] = {tags, results, Napi::Number::New(env, count)};
      if (fromLoop) {
        fn.MakeCallback(receiver, 3, args, *async_);
        if (env.IsExceptionPending()) {
          Napi::Error error = env.GetAndClearPendingException();
          napi_fatal_exception(env, error.Value());
        }
      } else {
        fn.Call(receiver, 3, args);
        if (env.IsExceptionPending()) {
          if (ring_ && io_uring_cq_ready(ring_.get()) > 0) Kick();
          break;
        }
      }
    }
    draining_ = false;
  }

  static void OnReadable(uv_poll_t* uv, int, int) {
    Uring* self = static_cast<CompletionPoll*>(uv->data)->owner;
    if (self == nullptr) return;
    // Reset the counter before draining: a CQE posted after the drain re-arms it.
    // An error is EAGAIN: a previous drain already took these completions.
    uint64_t counter;
    (void)ReadEventfd(self->efd_, &counter);
    if (self->draining_) return;  // cannot happen: the loop does not run inside a drain
    self->Drain(self->env_, true);
  }

  Napi::Env env_;
  RingPtr ring_;
  int efd_ = -1;
  CompletionPoll* poll_ = nullptr;
  std::vector<Slot> slots_;
  std::vector<uint32_t> freeSlots_;
  unsigned busy_ = 0;      // slots holding a prepared or in-flight request
  unsigned inflight_ = 0;  // submitted, completion not yet reaped
  bool draining_ = false;  // inside Drain(): onComplete is running
  Napi::Reference<Napi::Float64Array> tags_;
  Napi::Reference<Napi::Int32Array> results_;
  Napi::FunctionReference callback_;
  std::unique_ptr<Napi::AsyncContext> async_;
};

Napi::Value CreateUring(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  double entries;
  if (!ArgInteger(info, 0, "entries", 1, kMaxEntries, &entries)) return env.Undefined();
  if (!info[1].IsFunction()) {
    ThrowType(env, "onComplete must be a function");
    return env.Undefined();
  }
  auto raw = std::make_unique<io_uring>();
  io_uring_params params = {};
  params.flags = IORING_SETUP_CQSIZE;
  params.cq_entries = static_cast<unsigned>(entries) * kCqPerSqEntry;
  int r = io_uring_queue_init_params(static_cast<unsigned>(entries), raw.get(), &params);
  if (r < 0) {
    // Missing (ENOSYS), forbidden by sysctl/seccomp (EPERM, EACCES) or over the locked
    // memory limit of old kernels (ENOMEM): callers fall back to synchronous I/O.
    if (r == -ENOSYS || r == -EPERM || r == -EACCES || r == -ENOMEM) return env.Null();
    ThrowErrno(env, -r, "io_uring_queue_init");
    return env.Undefined();
  }
  // If the constructor never takes the ring, it is still released here.
  RingPtr ring(raw.release());
  Napi::Object uring = GetAddonData(env)->uringClass.New({Napi::External<RingPtr>::New(env, &ring), info[1]});
  if (env.IsExceptionPending()) return env.Undefined();
  return uring;
}

}  // namespace

void InitUring(Napi::Env env, Napi::Object exports) {
  GetAddonData(env)->uringClass = Napi::Persistent(Uring::Define(env));
  exports.Set("createUring", Napi::Function::New(env, CreateUring, "createUring"));
}

}  // namespace vhs
#endif  // VHS_HAVE_LIBURING
