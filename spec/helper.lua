-- spec/helper.lua: loaded by busted (--helper) before the spec files.
-- Points Lua at the source tree's scripts and the build tree's C module, so
-- `require "vdk"` works the same under lua5.4 and under the vdk launcher.
local build = os.getenv("VDK_BUILD_DIR") or "build"
local src = os.getenv("VDK_SOURCE_DIR") or "."
package.path = table.concat({
  src .. "/scripts/?.lua", src .. "/scripts/?/init.lua",
  src .. "/spec/?.lua", package.path }, ";")
package.cpath = build .. "/lua/?.so;" .. package.cpath
