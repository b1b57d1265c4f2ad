// eventfd counter reads and writes as the addon's users need them (kicks, calls, the
// io_uring completion signal): EINTR retried, errors returned, not thrown.
#pragma once

#include <stdint.h>

namespace vhs {

// Reads (and so resets) the counter into *value: 0, EAGAIN for a counter already at 0
// (the fds are non-blocking), another errno on failure, EINVAL for a short read.
int ReadEventfd(int fd, uint64_t* value);

// Adds `value` to the counter: 0, or the errno (EAGAIN: the counter is saturated).
int WriteEventfd(int fd, uint64_t value);

}  // namespace vhs
