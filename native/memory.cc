// memfd guest memory and shared mappings of region fds, exposed to JS as external
// ArrayBuffer windows over one mmap.
//
// Lifetime: the munmap must happen exactly once, and never while JS can still reach
// the bytes. A refcounted MapState is shared by the Mapping object and every window
// ArrayBuffer (each holds one reference). An explicit unmap() detaches all windows
// first, so JS sees zero-length buffers instead of faulting, then munmaps; the window
// finalizers that run later only drop their reference. Without an explicit unmap the
// last reference to go (Mapping or any window) munmaps.
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <vector>

#include "addon.h"
#include "args.h"
#include "registry.h"

namespace vhs {
namespace {

// V8 caps one ArrayBuffer below 4 GiB; 1 GiB windows keep every window the same size
// (except the last) and make address→window arithmetic a shift.
constexpr size_t kWindowSize = size_t{1} << 30;

struct MapState {
  uint8_t* address;
  size_t length;
  int refs;  // touched only on the JS thread that created the mapping
  bool unmapped;
  size_t guard = 0;  // PROT_NONE bytes reserved on each side (mmapGuarded), unmapped with it
};

void UnmapOnce(MapState* s) {
  if (s->unmapped) return;
  s->unmapped = true;
  UnregisterMapping(reinterpret_cast<uintptr_t>(s->address));
  munmap(s->address - s->guard, s->length + 2 * s->guard);
}

void Release(MapState* s) {
  if (--s->refs > 0) return;
  UnmapOnce(s);
  delete s;
}

void WindowFinalizer(Napi::Env, void*, MapState* s) { Release(s); }

class Mapping : public Napi::ObjectWrap<Mapping> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Mapping",
                       {InstanceAccessor<&Mapping::Mapped>("mapped"), InstanceMethod<&Mapping::Unmap>("unmap")});
  }

  explicit Mapping(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Mapping>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsExternal()) {
      ThrowType(env, "Mapping objects are created by native.mmap()");
      return;
    }
    state_ = info[0].As<Napi::External<MapState>>().Data();
    state_->refs++;
    size_t count = (state_->length + kWindowSize - 1) / kWindowSize;
    Napi::Array windows = Napi::Array::New(env, count);
    for (size_t i = 0; i < count; i++) {
      size_t offset = i * kWindowSize;
      size_t length = std::min(kWindowSize, state_->length - offset);
      state_->refs++;
      Napi::ArrayBuffer window =
          Napi::ArrayBuffer::New(env, state_->address + offset, length, WindowFinalizer, state_);
      if (env.IsExceptionPending()) {
        // Whether the failed buffer's finalizer will still run is not specified, so its
        // reference is deliberately kept: leaking a few bytes beats a use-after-free.
        // The memory itself goes now, before any window is handed to JS.
        for (auto& ref : windows_) ref.Value().Detach();
        UnmapOnce(state_);
        return;
      }
      windows.Set(static_cast<uint32_t>(i), window);
      windows_.push_back(Napi::Persistent(window));
    }
    windows.Freeze();
    info.This().As<Napi::Object>().DefineProperties({
        Napi::PropertyDescriptor::Value(
            "address", Napi::Number::New(env, static_cast<double>(reinterpret_cast<uintptr_t>(state_->address))),
            napi_enumerable),
        Napi::PropertyDescriptor::Value("length", Napi::Number::New(env, static_cast<double>(state_->length)),
                                        napi_enumerable),
        Napi::PropertyDescriptor::Value("windows", windows, napi_enumerable),
    });
  }

  ~Mapping() override {
    if (state_ != nullptr) Release(state_);
  }

 private:
  Napi::Value Mapped(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), state_ != nullptr && !state_->unmapped);
  }

  Napi::Value Unmap(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (state_ == nullptr || state_->unmapped) return env.Undefined();
    for (auto& ref : windows_) {
      Napi::ArrayBuffer window = ref.Value();
      if (!window.IsEmpty() && !window.IsDetached()) window.Detach();
    }
    windows_.clear();
    UnmapOnce(state_);
    return env.Undefined();
  }

  MapState* state_ = nullptr;
  std::vector<Napi::Reference<Napi::ArrayBuffer>> windows_;
};

Napi::Value Mmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  uint64_t offset, length;
  bool writable;
  if (!ArgFd(info, 0, &fd) || !ArgU64(info, 1, "offset", &offset) || !ArgU64(info, 2, "length", &length) ||
      !ArgBool(info, 3, "writable", &writable)) {
    return env.Undefined();
  }
  if (length == 0) {
    ThrowErrno(env, EINVAL, "mmap");
    return env.Undefined();
  }
  // A read-only mapping really is read-only: a JS store into its windows kills the
  // process with SIGSEGV, so only map read-only what JS will never write.
  int prot = PROT_READ | (writable ? PROT_WRITE : 0);
  void* p = mmap(nullptr, length, prot, MAP_SHARED, fd, static_cast<off_t>(offset));
  if (p == MAP_FAILED) {
    ThrowErrno(env, errno, "mmap");
    return env.Undefined();
  }
  RegisterMapping(reinterpret_cast<uintptr_t>(p), length);
  // This function holds a reference of its own until the end, so that whatever the
  // constructor managed to do before a failure, Release() here settles it.
  MapState* state = new MapState{static_cast<uint8_t*>(p), static_cast<size_t>(length), 1, false};
  Napi::Value mapping = GetAddonData(env)->mappingClass.New({Napi::External<MapState>::New(env, state)});
  Release(state);
  if (env.IsExceptionPending()) return env.Undefined();
  return mapping;
}

Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) {
    ThrowType(env, "name must be a string");
    return env.Undefined();
  }
  std::string name = info[0].As<Napi::String>().Utf8Value();
  uint64_t size;
  if (!ArgU64(info, 1, "size", &size)) return env.Undefined();
  // Optional third argument: seal the size (grow, shrink, and the seals themselves), so
  // that whoever the fd is handed to cannot truncate it under a mapping (SIGBUS).
  bool seal = false;
  if (info.Length() > 2 && !info[2].IsUndefined() && !ArgBool(info, 2, "seal", &seal)) return env.Undefined();
  int fd = memfd_create(name.c_str(), MFD_CLOEXEC | (seal ? MFD_ALLOW_SEALING : 0));
  if (fd < 0) {
    ThrowErrno(env, errno, "memfd_create");
    return env.Undefined();
  }
  if (ftruncate(fd, static_cast<off_t>(size)) < 0) {
    int err = errno;
    close(fd);
    ThrowErrno(env, err, "ftruncate");
    return env.Undefined();
  }
  if (seal && fcntl(fd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) < 0) {
    int err = errno;
    close(fd);
    ThrowErrno(env, err, "fcntl(F_ADD_SEALS)");
    return env.Undefined();
  }
  return Napi::Number::New(env, fd);
}

// The seals of a memfd (F_GET_SEALS): 0 for a memfd without any, -1 for a file that
// cannot carry seals (EINVAL: not a memfd or shmem file).
Napi::Value MemfdSeals(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0) {
    if (errno == EINVAL) return Napi::Number::New(env, -1);
    ThrowErrno(env, errno, "fcntl(F_GET_SEALS)");
    return env.Undefined();
  }
  return Napi::Number::New(env, seals);
}

// Test support (fuzzing the guest-facing parsers): the same MAP_SHARED mapping with
// `guard` bytes of PROT_NONE on each side, so that a native access (iovec I/O, ring
// words) running off either end of a guest region faults at once instead of reading or
// corrupting whatever happens to be mapped next to it. The guards are part of the one
// reservation and go with the mapping's munmap.
Napi::Value MmapGuarded(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  uint64_t offset, length, guard;
  bool writable;
  if (!ArgFd(info, 0, &fd) || !ArgU64(info, 1, "offset", &offset) || !ArgU64(info, 2, "length", &length) ||
      !ArgBool(info, 3, "writable", &writable) || !ArgU64(info, 4, "guard", &guard)) {
    return env.Undefined();
  }
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  // Whole pages only: a partial last page would leave the rest of it readable.
  if (length == 0 || guard == 0 || length % page != 0 || guard % page != 0) {
    ThrowErrno(env, EINVAL, "mmapGuarded");
    return env.Undefined();
  }
  size_t total = static_cast<size_t>(length + 2 * guard);
  void* base = mmap(nullptr, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) {
    ThrowErrno(env, errno, "mmap");
    return env.Undefined();
  }
  int prot = PROT_READ | (writable ? PROT_WRITE : 0);
  void* p = mmap(static_cast<uint8_t*>(base) + guard, static_cast<size_t>(length), prot, MAP_SHARED | MAP_FIXED, fd,
                 static_cast<off_t>(offset));
  if (p == MAP_FAILED) {
    int err = errno;
    munmap(base, total);
    ThrowErrno(env, err, "mmap");
    return env.Undefined();
  }
  RegisterMapping(reinterpret_cast<uintptr_t>(p), length);
  MapState* state = new MapState{static_cast<uint8_t*>(p), static_cast<size_t>(length), 1, false, static_cast<size_t>(guard)};
  Napi::Value mapping = GetAddonData(env)->mappingClass.New({Napi::External<MapState>::New(env, state)});
  Release(state);
  if (env.IsExceptionPending()) return env.Undefined();
  return mapping;
}

}  // namespace

void InitMemory(Napi::Env env, Napi::Object exports) {
  GetAddonData(env)->mappingClass = Napi::Persistent(Mapping::Define(env));
  exports.Set("WINDOW_SIZE", Napi::Number::New(env, static_cast<double>(kWindowSize)));
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate, "memfdCreate"));
  exports.Set("memfdSeals", Napi::Function::New(env, MemfdSeals, "memfdSeals"));
  exports.Set("mmap", Napi::Function::New(env, Mmap, "mmap"));
  exports.Set("mmapGuarded", Napi::Function::New(env, MmapGuarded, "mmapGuarded"));
}

}  // namespace vhs
