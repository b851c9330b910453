-- vdk-0.1.0-1.rockspec: the vdk Lua module (C core, formats, bindings and
-- the Lua scripts) for embedders, built with CMake:
--   luarocks --lua-version=5.4 make            (from a source tree)
--   luarocks --lua-version=5.4 --tree=DIR make (into a tree of your own)
-- Needs the build dependencies of .ci/install-deps (cmake, pkg-config,
-- liblua5.4-dev, libuv1-dev, zlib1g-dev, libzstd-dev, libnbd-dev; readline
-- and libdeflate are optional). The rock also carries libvdk and vdk.pc
-- (in clib/), vdk.h, the vdk command and its man page under its own prefix.
rockspec_format = "3.0"
package = "vdk"
version = "0.1.0-1"
source = {
  url = "git+file:///src/vdk",
  tag = "v0.1.0",
}
description = {
  summary = "A disk-image engine (raw, qcow2, QED, NBD) as a Lua 5.4 module",
  detailed = [[
vdk reads, writes, converts, checks and inspects virtual disk images with a
C core (qcow2, QED, raw, NBD; metadata caches; a libuv copy engine) exposed
as the Lua module `vdk`: vdk.open, vdk.create, vdk.copy, vdk.compare,
img:explain(offset) and the other inspection helpers, and the vdk.shell REPL.
]],
  license = "see the source tree",
}
dependencies = {
  "lua >= 5.4, < 5.5",
}
build = {
  type = "cmake",
  variables = {
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    CMAKE_INSTALL_LIBDIR = "clib", -- libvdk and vdk.pc: lib/ is for Lua C modules
    CMAKE_BUILD_TYPE = "RelWithDebInfo",
    VDK_WERROR = "OFF", -- a user's compiler may warn where ours does not
    VDK_LUA_CMOD_DIR = "$(LIBDIR)",
    VDK_LUA_LMOD_DIR = "$(LUADIR)",
    VDK_BUILD_TESTS = "OFF",
    VDK_TESTING = "OFF",
  },
  copy_directories = { "docs", "examples" },
}
