#include "addon.h"
namespace vhs {
void InitUring(Napi::Env, Napi::Object) {}
}  // namespace vhs
