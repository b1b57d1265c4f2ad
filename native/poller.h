// Which fds are being watched by an open Poller. libuv warns that closing a polled fd
// can make the handle watch whatever file reuses the number, so close() refuses them.
#pragma once

namespace vhs {

void MarkPolled(int fd);
void UnmarkPolled(int fd);
bool IsPolled(int fd);

}  // namespace vhs
