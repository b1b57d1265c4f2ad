{
  "variables": {
    "have_liburing%": "<!(test -f /usr/include/liburing.h && echo 1 || echo 0)"
  },
  "targets": [
    {
      "target_name": "vhost_s3_native",
      "sources": [
        "native/addon.cc",
        "native/errors.cc",
        "native/socket.cc",
        "native/fd.cc",
        "native/poller.cc",
        "native/eventfd.cc",
        "native/registry.cc",
        "native/memory.cc",
        "native/ring.cc",
        "native/iovec.cc",
        "native/fileio.cc",
        "native/uring.cc",
        "native/fuse_dev.cc",
        "native/loop_poll.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS", "_GNU_SOURCE"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra"],
      "conditions": [
        ["have_liburing==1", {
          "defines": ["VHS_HAVE_LIBURING"],
          "libraries": ["-luring"]
        }]
      ]
    }
  ]
}
