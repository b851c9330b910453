-- spec/qed_repair_spec.lua: QED's need-check bit and the repair on open.
--   * a process that dies after writing (os.exit without closing, or
--     SIGKILL) leaves the bit set; a read-only open works without touching
--     the file and reports dirty-flag; a read-write open repairs (leaked
--     clusters reclaimed), clears the bit, and keeps every flushed byte;
--   * qemu-io killed mid-session (its `abort` command) leaves an image vdk
--     repairs the same way; qemu-img check then finds it clean;
--   * no_repair opens keep the bit; a clean close clears it.
local U = require "support.util"
local vdk = require "vdk"

local function need_check(path)
  return U.read_file(path):byte(17) & 2 == 2
end

local function qemu_clean(path)
  local ok, out = U.run("qemu-img check %s", U.q(path))
  assert(ok and out:find("No errors were found", 1, true) and not out:find("leak"), out)
end

-- Run a Lua script under `vdk run`; returns its exit code and output.
local function vdk_script(dir, name, code)
  local script = dir .. "/" .. name .. ".lua"
  U.write_file(script, code)
  local status, out, err = U.vdk_cmd("run", script)
  return status, out .. err
end

local WRITER = [[
local vdk = require "vdk"
local path, mode = ...
local img = assert(vdk.create(path, { format = "qed", size = "16M", cluster_size = 4096,
                                      table_size = 2 }))
-- Flushed: must survive the crash.
assert(img:write(0, string.rep("A", 100000)))
assert(img:write(5 << 20, string.rep("B", 4096)))
assert(img:flush())
-- Not flushed: allocations whose tables are still only in memory.
for i = 0, 40 do assert(img:write((8 << 20) + i * 12288, string.rep("C", 5000))) end
assert(img:write(50000, string.rep("D", 10)))
if mode == "kill" then
  local pid = io.open("/proc/self/stat"):read("l"):match("^(%d+)")
  os.execute("kill -9 " .. pid)
end
os.exit(0, false) -- no close, no flush
]]

-- The bytes the writer flushed before it died.
local function flushed_ok(img)
  return img:read(0, 50000) == string.rep("A", 50000)
     and img:read(50010, 49990) == string.rep("A", 49990)
     and img:read(5 << 20, 4096) == string.rep("B", 4096)
end

describe("QED after a crash", function()
  local dir
  setup(function() dir = U.tmpdir() end)

  for _, mode in ipairs({ "exit", "kill" }) do
    it(("is repaired on a read-write open (%s)"):format(mode), function()
      local p = ("%s/crash-%s.qed"):format(dir, mode)
      local code = WRITER:gsub("local path, mode = %.%.%.",
                               ("local path, mode = %q, %q"):format(p, mode))
      local status, out = vdk_script(dir, "writer-" .. mode, code)
      if mode == "exit" then assert.equal(0, status, out) end
      assert.is_true(need_check(p))
      local before = U.read_file(p)

      -- Read-only: opens, reads the flushed data, changes nothing. (The
      -- unflushed in-place write of "D" at 50000 may or may not be there.)
      local img = assert(vdk.open(p))
      assert.is_true(flushed_ok(img))
      assert.is_true(img:info()["dirty-flag"])
      img:close()
      local cjson = U.cjson()
      if cjson then
        local c, js = U.vdk_cmd("info", "--output=json", p)
        assert.equal(0, c)
        assert.is_true(cjson.decode(js)["dirty-flag"])
      end
      assert.equal(before, U.read_file(p))

      -- Read-write: repaired, clean, the flushed data intact.
      img = assert(vdk.open(p, { readonly = false }))
      assert.is_false(img:info()["dirty-flag"])
      img:close()
      assert.is_false(need_check(p))
      assert.is_true(#U.read_file(p) <= #before)
      qemu_clean(p)
      img = assert(vdk.open(p))
      assert.is_true(flushed_ok(img))
      img:close()
    end)
  end

  it("left by qemu-io (abort) is repaired by vdk", function()
    local p = dir .. "/qemu-crash.qed"
    U.must("qemu-img create -q -f qed -o cluster_size=4k,table_size=2 %s 16M", U.q(p))
    U.run("qemu-io -f qed -c 'write -P 0x11 0 64k' -c 'flush' -c 'write -P 0x22 1M 64k' " ..
          "-c 'write -P 0x33 9M 4k' -c abort %s", U.q(p))
    assert.is_true(need_check(p))
    local img = assert(vdk.open(p, { readonly = false }))
    assert.is_true(img:read(0, 65536) == string.rep("\x11", 65536))
    img:close()
    assert.is_false(need_check(p))
    qemu_clean(p)
  end)
end)

describe("QED need-check bit", function()
  local dir
  setup(function() dir = U.tmpdir() end)

  local function patched(name)
    local p = dir .. "/" .. name
    local img = assert(vdk.create(p, { format = "qed", size = "4M" }))
    assert(img:write(0, string.rep("x", 70000)))
    img:close()
    assert.is_false(need_check(p))
    local f = assert(io.open(p, "r+b"))
    f:seek("set", 16)
    f:write("\2")
    f:close()
    return p
  end

  it("stays set through read-only and no_repair opens", function()
    local p = patched("kept.qed")
    local img = assert(vdk.open(p))
    img:close()
    assert.is_true(need_check(p))
    img = assert(vdk.open(p, { readonly = false, no_repair = true }))
    assert.is_true(img:info()["dirty-flag"])
    assert(img:write(1 << 20, "written without a repair"))
    img:close()
    assert.is_true(need_check(p))
    img = assert(vdk.open(p, { readonly = false }))
    assert.equal("written without a repair", img:read(1 << 20, 24))
    img:close()
    assert.is_false(need_check(p))
    qemu_clean(p)
  end)

  it("is set while allocating writes are unflushed and cleared by a flush", function()
    local p = dir .. "/live.qed"
    local img = assert(vdk.create(p, { format = "qed", size = "4M" }))
    assert.is_false(need_check(p))
    assert(img:write(0, "first"))
    assert.is_true(need_check(p))
    assert.is_true(img:info()["dirty-flag"])
    assert(img:flush())
    assert.is_false(need_check(p))
    assert(img:write(3, "st!")) -- in place: no metadata change
    assert.is_false(need_check(p))
    img:close()
    qemu_clean(p)
  end)
end)
