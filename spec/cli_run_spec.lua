-- spec/cli_run_spec.lua: `vdk run SCRIPT [ARGS]` behaves like
-- `lua5.4 SCRIPT ARGS`, with the vdk module at hand.
local U = require "support.util"
local vdk_cmd = U.vdk_cmd

local function script(dir, name, text)
  local path = dir .. "/" .. name
  U.write_file(path, text)
  return path
end

describe("vdk run", function()
  it("passes arg and ... as lua5.4 does", function()
    local dir = U.tmpdir()
    local s = script(dir, "args.lua", [[
print(arg[0], #arg, arg[1], arg[2])
print(select("#", ...), ...)
print(arg[-1])
]])
    local code, out, err = vdk_cmd("run", s, "one", "two words")
    assert.equal(0, code, err)
    local lines = {}
    for l in out:gmatch("[^\n]*\n") do lines[#lines + 1] = l end
    assert.equal(s .. "\t2\tone\ttwo words\n", lines[1])
    assert.equal("2\tone\ttwo words\n", lines[2])
    assert.equal("run\n", lines[3])
  end)

  it("loads the vdk module", function()
    local dir = U.tmpdir()
    local s = script(dir, "m.lua", [[
local vdk = require "vdk"
local img = assert(vdk.create(arg[1], { size = 65536 }))
img:write(0, "from a script")
img:close()
print(vdk.version)
]])
    local code, out, err = vdk_cmd("run", s, dir .. "/x.raw")
    assert.equal(0, code, err)
    assert.truthy(out:match("^%d+%.%d+%.%d+\n$"))
    assert.equal("from a script", U.read_file(dir .. "/x.raw"):sub(1, 13))
  end)

  it("prints 'vdk: <message>' and exits 1 on an error", function()
    local dir = U.tmpdir()
    local s = script(dir, "e.lua", "local x = 1\nerror('it broke')\n")
    local code, out, err = vdk_cmd("run", s)
    assert.equal(1, code)
    assert.equal("", out)
    assert.equal(("vdk: %s:2: it broke\n"):format(s), err)
  end)

  it("adds a traceback when VDK_DEBUG is set", function()
    local dir = U.tmpdir()
    local s = script(dir, "e.lua", "local function f() error('deep') end\nf()\n")
    local code, _, err = U.run3("VDK_DEBUG=1 %s run %s", U.q(U.vdk), U.q(s))
    assert.equal(1, code)
    assert.truthy(err:find("^vdk: [^\n]*deep\nstack traceback:\n"), err)
  end)

  it("describes non-string error values", function()
    local dir = U.tmpdir()
    local s = script(dir, "t.lua", "error({})\n")
    local code, _, err = vdk_cmd("run", s)
    assert.equal(1, code)
    assert.equal("vdk: (error object is a table value)\n", err)
    s = script(dir, "t2.lua", "error(setmetatable({}, {__tostring = function() return 'custom' end}))\n")
    code, _, err = vdk_cmd("run", s)
    assert.equal(1, code)
    assert.equal("vdk: custom\n", err)
  end)

  it("lets os.exit set the status", function()
    local dir = U.tmpdir()
    local code = vdk_cmd("run", script(dir, "x.lua", "os.exit(7)"))
    assert.equal(7, code)
    code = vdk_cmd("run", script(dir, "y.lua", "os.exit(false)"))
    assert.equal(1, code)
    code = vdk_cmd("run", script(dir, "z.lua", "io.write('ok') os.exit(true, true)"))
    assert.equal(0, code)
  end)

  it("closes open images on os.exit, so their data is flushed", function()
    local dir = U.tmpdir()
    local s = script(dir, "w.lua", [[
local vdk = require "vdk"
local img = assert(vdk.create(arg[1], { size = 65536 }))
img:write(0, "kept")
setmetatable({}, { __gc = function() io.write("finalized\n") end })
os.exit(5)
]])
    local code, out = vdk_cmd("run", s, dir .. "/x.raw")
    assert.equal(5, code)
    assert.equal("finalized\n", out)
    assert.equal("kept", U.read_file(dir .. "/x.raw"):sub(1, 4))
  end)

  it("reports a missing or broken script", function()
    local dir = U.tmpdir()
    local code, _, err = vdk_cmd("run", dir .. "/none.lua")
    assert.equal(1, code)
    assert.truthy(err:find("^vdk: cannot open [^\n]*none%.lua"), err)
    code, _, err = vdk_cmd("run", script(dir, "bad.lua", "x = = 1"))
    assert.equal(1, code)
    assert.truthy(err:find("^vdk: [^\n]*bad%.lua:1:"), err)
    code, _, err = vdk_cmd("run")
    assert.equal(1, code)
    assert.truthy(err:find("Try 'vdk run --help'", 1, true))
  end)

  it("reads the script from stdin with '-' and skips a #! line", function()
    local dir = U.tmpdir()
    local code, out = U.run3("echo 'print(...)' | %s run - a b", U.q(U.vdk))
    assert.equal(0, code)
    assert.equal("a\tb\n", out)
    code, out = vdk_cmd("run", script(dir, "s.lua", "#!/usr/bin/env lua5.4\nprint('shebang')\n"))
    assert.equal(0, code)
    assert.equal("shebang\n", out)
  end)

  it("runs busted as its interpreter (busted --lua='vdk run')", function()
    local dir = U.tmpdir()
    script(dir, "ok_spec.lua", [[
describe("inner", function()
  it("runs under vdk", function()
    assert.equal("string", type(require("vdk").version))
    assert.is_function(package.preload["vdk.core"])
  end)
end)
]])
    script(dir, "bad_spec.lua", [[
describe("inner", function() it("fails", function() assert.equal(1, 2) end) end)
]])
    local build, src = U.abspath(U.build), U.abspath(U.src)
    local helper = src .. "/spec/helper.lua"
    local lua = U.abspath(U.vdk) .. " run"
    local code, out = U.run3("cd %s && VDK_BUILD_DIR=%s VDK_SOURCE_DIR=%s busted --lua=%s --helper=%s -o plainTerminal ok_spec.lua",
      U.q(dir), U.q(build), U.q(src), U.q(lua), U.q(helper))
    assert.equal(0, code, out)
    assert.truthy(out:find("1 success / 0 failures", 1, true), out)
    code, out = U.run3("cd %s && VDK_BUILD_DIR=%s VDK_SOURCE_DIR=%s busted --lua=%s --helper=%s -o plainTerminal bad_spec.lua",
      U.q(dir), U.q(build), U.q(src), U.q(lua), U.q(helper))
    assert.is_not.equal(0, code)
    assert.truthy(out:find("0 successes / 1 failure", 1, true), out)
  end)
end)
