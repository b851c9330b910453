-- spec/qcow2_damaged_spec.lua: damaged qcow2 images through the Lua module
-- and the vdk command: each is a valid qemu-img image with a few bytes
-- patched. Opening (or reading the damaged part) must fail with the right
-- code and a message naming the structure; nothing may crash. The C test
-- tests/c/test_qcow2_damaged.c covers many more fields.
local U = require "support.util"
local vdk = require "vdk"

local MiB = 1024 * 1024

local function patch(path, off, fmt, ...)
  local data = U.read_file(path)
  local bytes = string.pack(fmt, ...)
  U.write_file(path, data:sub(1, off) .. bytes .. data:sub(off + #bytes + 1))
end

local function be64(path, off) return (string.unpack(">I8", U.read_file(path), off + 1)) end

-- A valid image with data, and a copy to damage.
local function template(dir, opts)
  local p = dir .. "/t.qcow2"
  U.must("qemu-img create -q -f qcow2 %s %s 64M", opts or "", U.q(p))
  U.must("qemu-io -f qcow2 -c 'write -P 7 0 1M' -c 'write -P 9 32M 64k' %s", U.q(p))
  return p
end

local function damaged(dir, tmpl, fn)
  local p = dir .. "/d.qcow2"
  U.write_file(p, U.read_file(tmpl))
  fn(p)
  return p
end

describe("damaged qcow2 headers", function()
  local dir, tmpl
  setup(function()
    dir = U.tmpdir()
    tmpl = template(dir)
  end)

  local cases = {
    { "version 5", function(p) patch(p, 4, ">I4", 5) end, "UNSUPPORTED", "version 5" },
    { "cluster_bits 30", function(p) patch(p, 20, ">I4", 30) end, "UNSUPPORTED", "2^30" },
    { "cluster_bits 3", function(p) patch(p, 20, ">I4", 3) end, "CORRUPT", "cluster_bits 3" },
    { "header_length 7", function(p) patch(p, 100, ">I4", 7) end, "CORRUPT", "header_length" },
    { "L1 offset unaligned", function(p) patch(p, 40, ">I8", 0x30000 + 0x1234) end, "CORRUPT",
      "L1 table offset 0x31234 is not cluster%-aligned" },
    { "L1 larger than 32 MiB", function(p) patch(p, 36, ">I4", 0x1000000) end, "CORRUPT", "32 MiB" },
    { "L1 too small", function(p) patch(p, 36, ">I4", 0) end, "CORRUPT", "too small" },
    { "refcount table past the end", function(p) patch(p, 48, ">I8", 1 << 44) end, "CORRUPT",
      "refcount table" },
    { "refcount table over 8 MiB", function(p) patch(p, 56, ">I4", 200) end, "CORRUPT", "8 MiB" },
    { "snapshot count", function(p) patch(p, 60, ">I4", 70000) end, "CORRUPT", "snapshots" },
    { "encryption", function(p) patch(p, 32, ">I4", 2) end, "UNSUPPORTED", "encrypt" },
    { "unknown incompatible bit", function(p) patch(p, 72, ">I8", 1 << 20) end, "UNSUPPORTED",
      "bit 20" },
    { "external data file", function(p) patch(p, 72, ">I8", 4) end, "UNSUPPORTED", "data file" },
    { "extension past the cluster", function(p) patch(p, 116, ">I4", 1 << 30) end, "CORRUPT",
      "header extension" },
    { "backing name too long", function(p) patch(p, 8, ">I8I4", 512, 4000) end, "CORRUPT",
      "backing file name" },
  }
  for _, c in ipairs(cases) do
    it(c[1], function()
      local p = damaged(dir, tmpl, c[2])
      local img, msg, code = vdk.open(p, { format = "qcow2" })
      assert.is_nil(img)
      assert.equal(c[3], code, msg)
      assert.truthy(msg:find(c[4]), msg)
      assert.truthy(msg:find("d.qcow2", 1, true), msg)   -- names the file
    end)
  end

  it("refuses writing a corrupt image but reads it, and vdk info says so", function()
    local p = damaged(dir, tmpl, function(p) patch(p, 72, ">I8", 2) end)
    local img, msg, code = vdk.open(p, { readonly = false })
    assert.is_nil(img)
    assert.equal("CORRUPT", code)
    img = assert(vdk.open(p))
    assert.equal(string.rep("\7", 16), img:read(0, 16))
    img:close()
    local rc, out = U.vdk_cmd("info", "--output=json", p)
    assert.equal(0, rc)
    assert.truthy(out:find('"corrupt": true'), out)
  end)
end)

describe("damaged qcow2 tables", function()
  local dir, tmpl
  setup(function()
    dir = U.tmpdir()
    tmpl = template(dir)
  end)

  local function l2_offset(p)
    local l1 = be64(p, 40)
    return be64(p, l1) & 0x00fffffffffffe00
  end

  it("an unaligned data cluster fails that read only", function()
    local p = damaged(dir, tmpl, function(p)
      local l2 = l2_offset(p)
      patch(p, l2, ">I8", be64(p, l2) + 0x200)
    end)
    local img = assert(vdk.open(p))
    local r, msg, code = img:read(0, 512)
    assert.is_nil(r)
    assert.equal("CORRUPT", code)
    assert.truthy(msg:find("unaligned host offset"), msg)
    assert.equal(string.rep("\7", 512), img:read(65536, 512))
    assert.equal(string.rep("\9", 512), img:read(32 * MiB, 512))
    img:close()
  end)

  it("an L2 table past the end of the file", function()
    local p = damaged(dir, tmpl, function(p) patch(p, be64(p, 40), ">I8", (1 << 40) | (1 << 63)) end)
    local img = assert(vdk.open(p))
    local r, msg, code = img:read(0, 512)
    assert.is_nil(r)
    assert.equal("CORRUPT", code)
    assert.truthy(msg:find("L2 table at 0x10000000000"), msg)
    img:close()
    -- The copy job reports it too, and does not crash.
    local rc, _, err = U.vdk_cmd("convert", "-O", "raw", p, dir .. "/out.raw")
    assert.is_not.equal(0, rc)
    assert.truthy(err:find("L2 table"), err)
  end)

  it("a compressed descriptor outside the file", function()
    local c = dir .. "/c.qcow2"
    U.must("qemu-img convert -c -O qcow2 %s %s", U.q(tmpl), U.q(c))
    local p = damaged(dir, c, function(p)
      patch(p, l2_offset(p), ">I8", (1 << 62) | (0xff << 54) | (1 << 45))
    end)
    local img = assert(vdk.open(p))
    local r, msg, code = img:read(0, 4096)
    assert.is_nil(r)
    assert.equal("CORRUPT", code)
    assert.truthy(msg:find("compressed cluster descriptor"), msg)
    img:close()
  end)

  it("marks the image corrupt when a write finds inconsistent metadata", function()
    local p = damaged(dir, tmpl, function(p)
      local l1 = be64(p, 40)
      patch(p, l1, ">I8", (be64(p, l1) + 0x400) | (1 << 63))
    end)
    local img = assert(vdk.open(p, { readonly = false }))
    local r, msg, code = img:write(100, "x")
    assert.is_nil(r)
    assert.equal("CORRUPT", code)
    assert.truthy(msg:find("Marking image as corrupt"), msg)
    img:close()
    local info = U.must("qemu-img info %s", U.q(p))
    assert.truthy(info:find("corrupt: true"), info)
  end)
end)
