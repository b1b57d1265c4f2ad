#include "registry.h"

#include <map>
#include <mutex>

namespace vhs {
namespace {

std::mutex registryMutex;
std::map<uintptr_t, size_t> mappings;  // start -> length; mmap never overlaps live ranges

bool RangeMappedLocked(uintptr_t addr, size_t length) {
  auto it = mappings.upper_bound(addr);
  if (it == mappings.begin()) return false;
  --it;
  uintptr_t offset = addr - it->first;
  return offset <= it->second && length <= it->second - offset;
}

}  // namespace

void RegisterMapping(uintptr_t start, size_t length) {
  std::lock_guard<std::mutex> lock(registryMutex);
  mappings[start] = length;
}

void UnregisterMapping(uintptr_t start) {
  std::lock_guard<std::mutex> lock(registryMutex);
  mappings.erase(start);
}

bool IovecsMapped(const iovec* iov, size_t count) {
  std::lock_guard<std::mutex> lock(registryMutex);
  for (size_t i = 0; i < count; i++) {
    if (!RangeMappedLocked(reinterpret_cast<uintptr_t>(iov[i].iov_base), iov[i].iov_len)) return false;
  }
  return true;
}

}  // namespace vhs
