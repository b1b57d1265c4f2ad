#include "errors.h"

#include <string.h>

#include "addon.h"

namespace vhs {

std::string ErrnoName(int err) {
  const char* name = strerrorname_np(err);
  if (name != nullptr) return name;
  return "E" + std::to_string(err);
}

void ThrowErrno(Napi::Env env, int err, const char* syscall) {
  std::string code = ErrnoName(err);
  const char* desc = strerrordesc_np(err);
  std::string message = std::string(syscall) + ": " + (desc ? desc : "Unknown error") + " (" + code + ")";
  Napi::HandleScope scope(env);
  Napi::Object error;
  AddonData* data = GetAddonData(env);
  if (data != nullptr && !data->errorClass.IsEmpty()) {
    error = data->errorClass.New({Napi::String::New(env, message)});
    if (env.IsExceptionPending()) return;  // the class constructor threw: let that surface
  } else {
    error = Napi::Error::New(env, message).Value();
  }
  error.Set("errno", Napi::Number::New(env, err));
  error.Set("code", Napi::String::New(env, code));
  error.Set("syscall", Napi::String::New(env, syscall));
  napi_throw(env, error);
}

void ThrowRange(Napi::Env env, const std::string& message) {
  Napi::RangeError::New(env, message).ThrowAsJavaScriptException();
}

void ThrowType(Napi::Env env, const std::string& message) {
  Napi::TypeError::New(env, message).ThrowAsJavaScriptException();
}

}  // namespace vhs
