// Adaptive busy-polling of the event loop before it blocks, as QEMU's event loop polls
// before ppoll (its poll-max-ns, poll-grow, poll-shrink). With one request in flight
// most of a request's latency is the wake-up: the daemon sleeps in epoll_wait, the
// peer's eventfd write wakes it, and only then does the next request start. Spinning a
// few tens of microseconds on the loop's epoll fd before blocking lets a request that
// arrives in that window start without the sleep and the wake-up.
//
// The spin only asks whether the loop's epoll fd is readable (poll with timeout 0): it
// consumes nothing, so libuv's own epoll_wait then returns at once with the events.
// Every fd the loop watches counts (kick eventfds, io_uring completions, sockets,
// /dev/fuse, libuv's thread-pool wake-up), and so do its timers and immediates
// (uv_backend_timeout bounds the spin): polling never delays anything the loop would
// have run. It spins only while the process waits for a peer, not for its own work: not
// while a device request or other work of its own is in flight (the counter the devices
// and the S3 read workers keep, which setLoopPoll is given), nor while a thread-pool request or a socket write is pending.
// That work may need the CPU the spin would take (an io-wq copy, a local
// S3 server answering a GET), and it is not what the guest waits on.
//
// The window adapts per loop turn, like QEMU's: measured from the start of the spin to
// the end of the wait (block), it doubles while the loop woke within the maximum (from
// kInitialNs), stays while the spin caught the event, and halves after each wait that
// outlasted the maximum (to 0 below kInitialNs), so an idle daemon soon stops spinning.
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <time.h>
#include <uv.h>

#include "addon.h"
#include "args.h"

namespace vhs {
namespace {

constexpr uint64_t kInitialNs = 4000;
// A longer window than this is refused: the spin holds the loop's thread.
constexpr double kMaxWindowNs = 1e9;

uint64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

bool LoopReady(int epfd) {
  struct pollfd p = {epfd, POLLIN, 0};
  return poll(&p, 1, 0) > 0;
}

}  // namespace

// Per environment (the main thread's loop, or a worker's), made by the first
// setLoopPoll() and closed with the environment.
struct LoopPoll {
  uv_prepare_t prepare;
  uv_check_t check;
  uint64_t maxNs = 0;
  uint64_t windowNs = 0;
  // When this turn's spin (or wait, with window 0) started; 0 before the first prepare.
  uint64_t waitStart = 0;
  // Counters: spins started, ended by a ready fd, ended by the window running out.
  double spins = 0, hits = 0, misses = 0;
  // Both handles closed: the memory can go.
  int open = 2;
  // The process's count of work in flight (an Int32Array's only element), if given.
  Napi::Reference<Napi::Int32Array> counter;
  const int32_t* workInFlight = nullptr;
};

namespace {

void FreeWhenClosed(uv_handle_t* h) {
  LoopPoll* s = static_cast<LoopPoll*>(h->data);
  if (--s->open == 0) delete s;
}

void CloseLoopPoll(void* arg) {
  LoopPoll* s = static_cast<LoopPoll*>(arg);
  // While the environment still exists: the handles' close callbacks may run after it.
  s->counter.Reset();
  s->workInFlight = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(&s->prepare), FreeWhenClosed);
  uv_close(reinterpret_cast<uv_handle_t*>(&s->check), FreeWhenClosed);
}

void Adapt(LoopPoll* s, uint64_t blockNs) {
  if (blockNs <= s->windowNs) return;  // the spin caught it: keep the window
  if (blockNs > s->maxNs) {
    // Polling would have had to last too long: halve the window, down to none.
    s->windowNs = s->windowNs / 2 < kInitialNs ? 0 : s->windowNs / 2;
  } else if (s->windowNs < s->maxNs) {
    uint64_t grown = s->windowNs == 0 ? kInitialNs : s->windowNs * 2;
    s->windowNs = grown < s->maxNs ? grown : s->maxNs;
  }
}

void OnPrepare(uv_prepare_t* h) {
  LoopPoll* s = static_cast<LoopPoll*>(h->data);
  uint64_t start = NowNs();
  s->waitStart = start;
  if (s->windowNs == 0) return;
  // Waiting for the process's own work (a device request being served, an S3 read, a
  // thread-pool request such as a file system call, a socket write), not for a peer: a
  // spin would only take a CPU that work may need.
  if (h->loop->active_reqs.count > 0) return;
  if (s->workInFlight != nullptr && *s->workInFlight != 0) return;
  int timeoutMs = uv_backend_timeout(h->loop);
  if (timeoutMs == 0) return;  // the loop will not block this turn
  uint64_t budget = s->windowNs;
  if (timeoutMs > 0 && static_cast<uint64_t>(timeoutMs) * 1000000u < budget) {
    budget = static_cast<uint64_t>(timeoutMs) * 1000000u;
  }
  int epfd = uv_backend_fd(h->loop);
  s->spins++;
  for (;;) {
    if (LoopReady(epfd)) {
      s->hits++;
      break;
    }
    if (NowNs() - start >= budget) {
      s->misses++;
      break;
    }
    __builtin_ia32_pause();
  }
  // libuv computes the wait's timeout from the loop's clock, read before this turn's
  // timers ran: without this the spin would be added to the next timer's delay.
  uv_update_time(h->loop);
}

void OnCheck(uv_check_t* h) {
  LoopPoll* s = static_cast<LoopPoll*>(h->data);
  if (s->waitStart == 0) return;
  Adapt(s, NowNs() - s->waitStart);
  s->waitStart = 0;
}

// setLoopPoll(maxNs, workInFlight?): 0 turns polling off; otherwise the window's
// maximum. The optional Int32Array holds the process's count of work in flight.
Napi::Value SetLoopPoll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  double maxNs;
  if (!ArgInteger(info, 0, "maxNs", 0, kMaxWindowNs, &maxNs)) return env.Undefined();
  bool counted = info.Length() > 1 && !info[1].IsUndefined();
  if (counted && (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array ||
                  info[1].As<Napi::Int32Array>().ElementLength() < 1)) {
    ThrowType(env, "workInFlight must be an Int32Array of at least one element");
    return env.Undefined();
  }
  AddonData* data = GetAddonData(env);
  LoopPoll* state = data->loopPoll;
  if (state == nullptr) {
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok) {
      ThrowErrno(env, EINVAL, "napi_get_uv_event_loop");
      return env.Undefined();
    }
    state = new LoopPoll();
    uv_prepare_init(loop, &state->prepare);
    uv_check_init(loop, &state->check);
    state->prepare.data = state;
    state->check.data = state;
    // Polling must not be what keeps the process alive.
    uv_unref(reinterpret_cast<uv_handle_t*>(&state->prepare));
    uv_unref(reinterpret_cast<uv_handle_t*>(&state->check));
    data->loopPoll = state;
    napi_add_env_cleanup_hook(env, CloseLoopPoll, state);
  }
  if (counted) {
    Napi::Int32Array counter = info[1].As<Napi::Int32Array>();
    state->counter = Napi::Persistent(counter);
    state->workInFlight = counter.Data();
  } else {
    state->counter.Reset();
    state->workInFlight = nullptr;
  }
  state->maxNs = static_cast<uint64_t>(maxNs);
  state->windowNs = 0;
  state->waitStart = 0;
  if (state->maxNs > 0) {
    uv_prepare_start(&state->prepare, OnPrepare);
    uv_check_start(&state->check, OnCheck);
  } else {
    uv_prepare_stop(&state->prepare);
    uv_check_stop(&state->check);
  }
  return env.Undefined();
}

Napi::Value LoopPollStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  LoopPoll empty;
  const LoopPoll* state = GetAddonData(env)->loopPoll;
  const LoopPoll* s = state != nullptr ? state : &empty;
  o.Set("maxNs", Napi::Number::New(env, static_cast<double>(s->maxNs)));
  o.Set("windowNs", Napi::Number::New(env, static_cast<double>(s->windowNs)));
  o.Set("spins", Napi::Number::New(env, s->spins));
  o.Set("hits", Napi::Number::New(env, s->hits));
  o.Set("misses", Napi::Number::New(env, s->misses));
  return o;
}

}  // namespace

void InitLoopPoll(Napi::Env env, Napi::Object exports) {
  exports.Set("setLoopPoll", Napi::Function::New(env, SetLoopPoll, "setLoopPoll"));
  exports.Set("loopPollStats", Napi::Function::New(env, LoopPollStats, "loopPollStats"));
}

}  // namespace vhs
