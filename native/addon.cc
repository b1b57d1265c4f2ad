// Module registration: each file registers its own functions on `exports`.
#include <napi.h>

#include "addon.h"

namespace vhs {
namespace {

Napi::Value SetErrorClass(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsFunction()) {
    Napi::TypeError::New(env, "setErrorClass expects a constructor").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  GetAddonData(env)->errorClass = Napi::Persistent(info[0].As<Napi::Function>());
  return env.Undefined();
}

}  // namespace
}  // namespace vhs

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  using namespace vhs;
  env.SetInstanceData(new AddonData());
  GetAddonData(env)->callbackKey = Napi::Persistent(Napi::Symbol::New(env, "vhost-s3 callback"));
  exports.Set("setErrorClass", Napi::Function::New(env, SetErrorClass, "setErrorClass"));
  InitSocket(env, exports);
  InitFd(env, exports);
  InitPoller(env, exports);
  InitEventfd(env, exports);
  InitMemory(env, exports);
  InitRing(env, exports);
  InitFileIo(env, exports);
  InitUring(env, exports);
  InitFuseDev(env, exports);
  InitLoopPoll(env, exports);
  return exports;
}

NODE_API_MODULE(vhost_s3_native, Init)
