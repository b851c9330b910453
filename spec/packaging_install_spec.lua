-- spec/packaging_install_spec.lua: what embedders get.
--   * `cmake --install` of the build tree into a fresh prefix: the library,
--     vdk.h, vdk.pc, the Lua module and scripts, the launcher, the man page
--     (made from docs/cli.md: it renders cleanly and has every command) and
--     the examples; examples/embed.c compiles with `pkg-config --cflags
--     --libs vdk` against that prefix and runs; examples/automation.lua runs
--     under stock lua5.4 with the installed module;
--   * `luarocks --lua-version=5.4 make` of vdk-0.1.0-1.rockspec builds and
--     installs the module into a tree of its own, where it loads and runs
--     the automation example (about half a minute; release builds only).
local U = require "support.util"

local build, src = U.abspath(U.build), U.abspath(U.src)

local function sanitizer_build()
  local cache = io.open(build .. "/CMakeCache.txt")
  if not cache then return false end
  local text = cache:read("a")
  cache:close()
  return text:find("VDK_SANITIZE:BOOL=ON", 1, true) ~= nil
end

local function find(dir, name)
  local p = io.popen(("find %s -name %s | head -n 1"):format(U.q(dir), U.q(name)))
  local path = p:read("l")
  p:close()
  return path
end

describe("cmake --install", function()
  local prefix
  setup(function()
    prefix = U.tmpdir() .. "/prefix"
    U.must("cmake --install %s --prefix %s", U.q(build), U.q(prefix))
  end)

  it("installs the library, header, pkg-config file, module, launcher, man page and examples", function()
    for _, name in ipairs({ "vdk.h", "libvdk.so", "vdk.pc", "core.so", "init.lua", "shell.lua",
                            "svg.lua", "vdk.1", "embed.c", "automation.lua" }) do
      assert.truthy(find(prefix, name), name .. " is not installed")
    end
    assert.truthy(U.run("test -x %s", U.q(prefix .. "/bin/vdk")))
    local code, out = U.run3("%s --version", U.q(prefix .. "/bin/vdk"))
    assert.equal(0, code)
    assert.truthy(out:find("^vdk version "))
  end)

  it("has a man page made from docs/cli.md with every command", function()
    local page = U.read_file(find(prefix, "vdk.1"))
    assert.truthy(page:find('^%.TH VDK 1'))
    for _, s in ipairs({ "NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS" }) do
      assert.truthy(page:find("\n.SH " .. s .. "\n", 1, true), s)
    end
    for _, name in ipairs(require("vdk.cli").COMMANDS) do
      assert.truthy(page:find('\n.SS "vdk ' .. name .. '"\n', 1, true), name)
    end
    if U.run("command -v groff") then
      local code, out, err = U.run3("groff -k -man -Tutf8 -ww -z %s", U.q(find(prefix, "vdk.1")))
      assert.equal(0, code, err)
      assert.equal("", out .. err)
    end
  end)

  it("builds and runs the C example with pkg-config against the prefix", function()
    if sanitizer_build() then
      pending("a sanitizer build's library needs the ASan runtime in the program")
      return
    end
    local pc = find(prefix, "vdk.pc"):match("^(.*)/vdk.pc$")
    local lib = find(prefix, "libvdk.so"):match("^(.*)/libvdk.so$")
    local dir = U.tmpdir()
    local flags = U.must("PKG_CONFIG_PATH=%s pkg-config --define-prefix --cflags --libs vdk",
      U.q(pc)):gsub("\n", "")
    assert.truthy(flags:find("-lvdk", 1, true), flags)
    assert.truthy(flags:find(prefix, 1, true), flags)
    U.must("cc -std=gnu11 -Wall -Werror %s/examples/embed.c %s -o %s/embed", U.q(src), flags,
      U.q(dir))
    local code, out, err = U.run3("LD_LIBRARY_PATH=%s %s/embed", U.q(lib), U.q(dir))
    assert.equal(0, code, err)
    assert.truthy(out:find("65536 bytes of data at host 0x", 1, true), out)
    assert.truthy(out:find("reads: data stored at host offset", 1, true), out)
  end)

  it("runs the Lua automation example with stock lua5.4 and the installed module", function()
    if sanitizer_build() then
      pending("a sanitizer build's module loads only into the vdk launcher")
      return
    end
    local lmod = find(prefix, "init.lua"):match("^(.*)/vdk/init.lua$")
    local cmod = find(prefix, "core.so"):match("^(.*)/vdk/core.so$")
    local code, out, err = U.run3("LUA_PATH=%s LUA_CPATH=%s lua5.4 %s/examples/automation.lua",
      U.q(lmod .. "/?.lua;" .. lmod .. "/?/init.lua;;"), U.q(cmod .. "/?.so;;"), U.q(src))
    assert.equal(0, code, out .. err)
    assert.truthy(out:find("fragmented\n  rewrote it as .*: equal"), out)
  end)
end)

describe("luarocks make", function()
  it("builds the rock and installs a module that loads and works", function()
    if sanitizer_build() then
      pending("the rock is built once, in the release suite")
      return
    end
    if not U.run("command -v luarocks") then
      pending("luarocks is not installed")
      return
    end
    local dir = U.tmpdir()
    local copy, tree = dir .. "/src", dir .. "/tree"
    -- A copy of the source tree (luarocks builds inside it).
    U.must("mkdir -p %s && cd %s && git ls-files -co --exclude-standard | grep -v '^build' "
      .. "| tar -cf - -T - | tar -C %s -xf -", U.q(copy), U.q(src), U.q(copy))
    local ok, out = U.run("cd %s && CMAKE_BUILD_PARALLEL_LEVEL=2 luarocks --lua-version=5.4 "
      .. "--tree=%s make vdk-0.1.0-1.rockspec", U.q(copy), U.q(tree))
    assert(ok, out)
    assert.truthy(find(tree .. "/lib/lua/5.4", "core.so"))
    assert.truthy(find(tree .. "/share/lua/5.4", "inspect.lua"))
    local code, res, err = U.run3("eval \"$(luarocks --lua-version=5.4 --tree=%s path)\" && "
      .. "lua5.4 -e %s && lua5.4 %s/examples/automation.lua", U.q(tree),
      U.q('local vdk = require "vdk"; print(vdk.version, require("vdk.shell") ~= nil)'),
      U.q(copy))
    assert.equal(0, code, res .. err)
    assert.truthy(res:find("^0%.1%.0\ttrue\n"), res)
    assert.truthy(res:find(": equal", 1, true), res)
  end)
end)
