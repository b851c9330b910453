-- spec/snapshot_damaged_spec.lua: damaged snapshot tables give a clear
-- error, never a crash, a hang or an allocation the file cannot justify.
--
-- Images are made by qemu-img (two snapshots) and patched: absurd counts,
-- tables and entries past the end of the file, overlapping L1 tables,
-- duplicate IDs, names that are not UTF-8, L1 tables too small for the
-- disk size, huge extra data. Structural damage fails the open; damage to
-- what snapshot operations rely on fails those operations (listing,
-- create, apply, delete, convert -l, info), each with a message naming
-- the problem. `vdk snapshot` exits 1 and prints one line.
local U = require "support.util"
local vdk = require "vdk"

local function be(fmt, f, off, ...)
  f:seek("set", off)
  f:write(string.pack(fmt, ...))
end

-- A qcow2 image with snapshots "one" and "two"; returns the path and the
-- table layout: { offset = table offset, entries = { {at =, l1 =, ...} } }.
local function make(dir)
  local path = dir .. "/d.qcow2"
  U.must("qemu-img create -q -f qcow2 %s 16M", U.q(path))
  U.must("qemu-io -c 'write -P 1 0 1M' %s", U.q(path))
  U.must("qemu-img snapshot -c one %s", U.q(path))
  U.must("qemu-io -c 'write -P 2 0 64k' %s", U.q(path))
  U.must("qemu-img snapshot -c two %s", U.q(path))
  local f = assert(io.open(path, "rb"))
  local hdr = f:read(104)
  local nb, off = string.unpack(">I4I8", hdr, 61)
  local t = { offset = off, entries = {} }
  local pos = off
  for _ = 1, nb do
    pos = (pos + 7) & ~7
    f:seek("set", pos)
    local e = f:read(40)
    local l1, l1n, idl, nml = string.unpack(">I8I4I2I2", e)
    local extra = string.unpack(">I4", e, 37)
    t.entries[#t.entries + 1] = { at = pos, l1 = l1, l1n = l1n, idl = idl, nml = nml,
                                  extra = extra, name_at = pos + 40 + extra + idl }
    pos = pos + 40 + extra + idl + nml
  end
  f:close()
  return path, t
end

local function patch(path, fn)
  local f = assert(io.open(path, "r+b"))
  fn(f)
  f:close()
end

-- vdk snapshot -l must exit 1 with one line naming the problem.
local function cli_fails(path, what)
  local code, out, err = U.vdk_cmd("snapshot", "-l", path)
  assert.equal(1, code, out .. err)
  assert.equal("", out)
  assert.truthy(err:find(what, 1, true), err)
  local lines = select(2, err:gsub("\n", ""))
  assert.equal(1, lines, err)
end

local OPEN_FAILS = {
  { "an absurd snapshot count", function(f, t) be(">I4", f, 60, 0x7fffffff) end, "snapshots" },
  { "more snapshots than the file holds", function(f, t) be(">I4", f, 60, 60000) end,
    "cannot hold" },
  { "a table past the end of the file", function(f, t) be(">I8", f, 64, 1 << 40) end,
    "snapshot table" },
  { "an L1 table past the end of the file", function(f, t) be(">I8", f, t.entries[1].at, 1 << 40) end,
    "past the end of the file" },
  { "a huge L1 size", function(f, t) be(">I4", f, t.entries[1].at + 8, 0x10000000) end,
    "32 MiB" },
  { "huge extra data", function(f, t) be(">I4", f, t.entries[1].at + 36, 0xfffffff0) end,
    "extra data" },
  { "a name running past the end of the file",
    function(f, t) be(">I2", f, t.entries[2].at + 14, 0xffff) end, "past the end of the file" },
}

local OP_FAILS = {
  { "two entries with the same ID",
    function(f, t) f:seek("set", t.entries[2].at + 40 + t.entries[2].extra) f:write("1") end,
    "two entries with ID '1'" },
  { "a name that is not UTF-8",
    function(f, t) f:seek("set", t.entries[1].name_at) f:write("\xff\xfe\xfd") end,
    "not valid UTF-8" },
  { "an L1 table too small for the disk size",
    function(f, t) be(">I8", f, t.entries[1].at + 48, 1 << 40) end, "cannot map its disk size" },
  { "two snapshots sharing one L1 table",
    function(f, t) be(">I8", f, t.entries[2].at, t.entries[1].l1) end, "overlap" },
  { "an L1 table over the snapshot table",
    function(f, t) be(">I8", f, t.entries[2].at, t.offset) end, "overlaps" },
}

describe("damaged snapshot tables", function()
  for _, case in ipairs(OPEN_FAILS) do
    it("refuse to open with " .. case[1], function()
      local dir = U.tmpdir()
      local path, t = make(dir)
      patch(path, function(f) case[2](f, t) end)
      local img, msg, code = vdk.open(path)
      assert.is_nil(img)
      assert.equal("CORRUPT", code, msg)
      assert.truthy(msg:find(case[3], 1, true), msg)
      cli_fails(path, case[3])
      local c2, _, err = U.vdk_cmd("info", path)
      assert.equal(1, c2)
      assert.truthy(err:find(case[3], 1, true), err)
    end)
  end

  for _, case in ipairs(OP_FAILS) do
    it("fail snapshot operations with " .. case[1], function()
      local dir = U.tmpdir()
      local path, t = make(dir)
      patch(path, function(f) case[2](f, t) end)
      -- The disk itself still reads.
      local img = assert(vdk.open(path))
      assert.equal(string.rep("\2", 16), img:read(0, 16))
      local list, msg, code = img:snapshots()
      assert.is_nil(list)
      assert.equal("CORRUPT", code)
      assert.truthy(msg:find(case[3], 1, true), msg)
      local ok
      ok, msg = img:snapshot_load({ id = "1" })
      assert.is_nil(ok)
      assert.truthy(msg:find(case[3], 1, true), msg)
      img:close()
      cli_fails(path, case[3])
      for _, args in ipairs({ { "-c", "new" }, { "-a", "one" }, { "-d", "two" } }) do
        local c2, out, err = U.vdk_cmd("snapshot", args[1], args[2], path)
        assert.equal(1, c2, out .. err)
        assert.truthy(err:find(case[3], 1, true), err)
      end
      local c3, _, err = U.vdk_cmd("convert", "-l", "one", "-O", "raw", path, dir .. "/o.raw")
      assert.equal(1, c3)
      assert.truthy(err:find(case[3], 1, true), err)
      -- nothing was written: qemu-img sees the same damage it saw before
      local img2 = assert(vdk.open(path, { readonly = false }))
      assert.is_nil((img2:snapshot_create("x")))
      img2:close()
    end)
  end

  it("bounds what a damaged table can make vdk allocate", function()
    local dir = U.tmpdir()
    local path, t = make(dir)
    -- 65536 snapshots claimed, the file is small: refused before any allocation
    patch(path, function(f) be(">I4", f, 60, 65536) end)
    local _, msg = vdk.open(path)
    assert.truthy(msg:find("cannot hold", 1, true), msg)
    -- every entry claiming the largest extra data, id and name: refused by size
    path, t = make(dir .. "")
    patch(path, function(f)
      for _, e in ipairs(t.entries) do be(">I4", f, e.at + 36, 1024) end
    end)
    local img
    img, msg = vdk.open(path)
    assert.is_nil(img)
    assert.truthy(msg and #msg > 0)
  end)
end)
