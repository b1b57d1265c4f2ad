// Address ranges of the live mappings made by mmap(). Vectored I/O is only allowed into
// these, so a wrong address from TypeScript becomes EFAULT instead of the kernel
// writing file data over the Node heap. Process-wide: every worker's mappings are
// valid memory of this process.
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

namespace vhs {

void RegisterMapping(uintptr_t start, size_t length);
void UnregisterMapping(uintptr_t start);
// True when every iov[i] lies entirely inside one live mapping.
bool IovecsMapped(const iovec* iov, size_t count);

}  // namespace vhs
