// Per-environment state shared by the addon's modules, and their registration hooks.
#pragma once

#include <napi.h>

namespace vhs {

struct LoopPoll;

struct AddonData {
  // NativeError from index.ts, so `err instanceof NativeError` holds for addon errors.
  Napi::FunctionReference errorClass;
  // Classes whose instances are only created by the factory functions.
  Napi::FunctionReference mappingClass;
  Napi::FunctionReference pollerClass;
  Napi::FunctionReference uringClass;
  // Key of the callback property below: a symbol made once (a string key would be
  // converted and looked up in V8's string table on every access).
  Napi::Reference<Napi::Symbol> callbackKey;
  // The event loop's busy-polling (loop_poll.cc), once turned on.
  LoopPoll* loopPoll = nullptr;
};

inline AddonData* GetAddonData(Napi::Env env) { return env.GetInstanceData<AddonData>(); }

// JS callbacks of pollers and rings are kept as a hidden property of their wrapper
// object, not as persistent references: a callback closing over its own poller would
// otherwise root the poller forever and it could never be collected. Each wrapper also
// holds a weak reference to its callback, read on every wake-up instead of the property
// (a property lookup per kick was measurable); the property is what keeps it alive.
inline Napi::Symbol CallbackKey(Napi::Env env) { return GetAddonData(env)->callbackKey.Value(); }

void InitSocket(Napi::Env env, Napi::Object exports);
void InitFd(Napi::Env env, Napi::Object exports);
void InitPoller(Napi::Env env, Napi::Object exports);
void InitEventfd(Napi::Env env, Napi::Object exports);
void InitMemory(Napi::Env env, Napi::Object exports);
void InitRing(Napi::Env env, Napi::Object exports);
void InitFileIo(Napi::Env env, Napi::Object exports);
void InitUring(Napi::Env env, Napi::Object exports);
void InitFuseDev(Napi::Env env, Napi::Object exports);
void InitLoopPoll(Napi::Env env, Napi::Object exports);

}  // namespace vhs
