// Failures leave the addon as JS exceptions carrying the positive errno in `.errno`
// and its symbolic name in `.code` (the NativeError shape of src/native/index.ts),
// so TypeScript branches on codes, never on message text.
#pragma once

#include <napi.h>

#include <string>

namespace vhs {

// Symbolic name ("EAGAIN"), or "E<number>" for values glibc does not know.
std::string ErrnoName(int err);

// Throws a NativeError (or a plain Error before index.ts has registered the class).
void ThrowErrno(Napi::Env env, int err, const char* syscall);
void ThrowRange(Napi::Env env, const std::string& message);
void ThrowType(Napi::Env env, const std::string& message);

}  // namespace vhs
