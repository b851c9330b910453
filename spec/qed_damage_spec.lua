-- spec/qed_damage_spec.lua: damaged QED images (made by patching bytes of
-- good ones) give clear errors: the open or the read fails with the right
-- code and a message that names the structure, the offset and the cause;
-- nothing crashes, hangs or reads outside the file.
local U = require "support.util"
local vdk = require "vdk"

local function le(n, width)
  local t = {}
  for i = 1, width do
    t[i] = string.char(n & 0xff)
    n = n >> 8
  end
  return table.concat(t)
end

local function patch(path, off, bytes)
  local f = assert(io.open(path, "r+b"))
  f:seek("set", off)
  f:write(bytes)
  f:close()
end

-- A good image: 4 KiB clusters, 2-cluster tables (L1 at 4096), data at
-- guest 0 (file 12288), its L2 table after it (file 16384).
local function good_image(dir, name, opts)
  local p = dir .. "/" .. name
  local o = { format = "qed", size = "8M", cluster_size = 4096, table_size = 2 }
  for k, v in pairs(opts or {}) do o[k] = v end
  local img = assert(vdk.create(p, o))
  assert(img:write(0, string.rep("d", 4096)))
  assert(img:close())
  return p
end

local function read_le64(path, off)
  local s = U.read_file(path):sub(off + 1, off + 8)
  local v = 0
  for i = 8, 1, -1 do v = (v << 8) | s:byte(i) end
  return v
end

-- Opening fails with code and a message matching each pattern (plain text).
local function assert_open_fails(path, code, ...)
  local img, msg, c = vdk.open(path, { format = "qed" })
  assert.is_nil(img)
  assert.equal(code, c, msg)
  assert.truthy(msg:find(path, 1, true), msg)
  for _, want in ipairs({ ... }) do
    assert.truthy(msg:find(want, 1, true), ("%q not in %q"):format(want, msg))
  end
  return msg
end

-- The image opens (read-only: nothing is repaired), a read fails so.
local function assert_read_fails(path, off, code, ...)
  local img = assert(vdk.open(path))
  local r, msg, c = img:read(off, 4096)
  assert.is_nil(r)
  assert.equal(code, c, msg)
  for _, want in ipairs({ ... }) do
    assert.truthy(msg:find(want, 1, true), ("%q not in %q"):format(want, msg))
  end
  -- The rest of the image still reads; walking the map fails cleanly.
  assert(img:read(6 << 20, 4096))
  local ok = pcall(function() for _ in img:map() do end end)
  assert.is_false(ok)
  img:close()
end

describe("damaged QED headers", function()
  local dir
  setup(function() dir = U.tmpdir() end)

  it("bad magic", function()
    local p = good_image(dir, "magic.qed")
    patch(p, 0, "QEX\0")
    assert_open_fails(p, "FORMAT", "qed: bad magic 0x00584551")
    -- Probing no longer finds QED: the file is taken for raw.
    local img = assert(vdk.open(p))
    assert.equal("raw", img.format)
    img:close()
  end)

  it("unknown feature bits", function()
    local p = good_image(dir, "features.qed")
    patch(p, 16, le(0x10 | 0x100, 8))
    assert_open_fails(p, "UNSUPPORTED", "unknown feature bits 4, 8", "0x110")
  end)

  it("cluster size not a power of two, too small, too large", function()
    local p = good_image(dir, "cs.qed")
    for _, cs in ipairs({ 3000, 2048, 128 << 20, 0 }) do
      patch(p, 4, le(cs, 4))
      assert_open_fails(p, "CORRUPT", ("cluster size %d is invalid"):format(cs))
    end
  end)

  it("table size out of range", function()
    local p = good_image(dir, "ts.qed")
    for _, ts in ipairs({ 0, 3, 32 }) do
      patch(p, 8, le(ts, 4))
      assert_open_fails(p, "CORRUPT", ("table size %d is invalid"):format(ts))
    end
  end)

  it("header size 0, or reaching past the L1 table", function()
    local p = good_image(dir, "hs.qed")
    patch(p, 12, le(0, 4))
    assert_open_fails(p, "CORRUPT", "header size is 0 clusters")
    patch(p, 12, le(2, 4))
    assert_open_fails(p, "CORRUPT", "L1 table offset 0x1000 lies inside the header")
  end)

  it("L1 table unaligned, inside the header, past the end of the file", function()
    local p = good_image(dir, "l1.qed")
    patch(p, 40, le(4096 + 8, 8))
    assert_open_fails(p, "CORRUPT", "L1 table offset 0x1008 is not a multiple of the cluster size")
    patch(p, 40, le(0, 8))
    assert_open_fails(p, "CORRUPT", "L1 table offset 0x0 lies inside the header")
    patch(p, 40, le(1 << 40, 8))
    assert_open_fails(p, "CORRUPT", "L1 table at 0x10000000000", "lies past the end of the file")
    patch(p, 40, le(16384 + 4096, 8)) -- its second cluster is past the end
    assert_open_fails(p, "CORRUPT", "L1 table at 0x5000 (8192 bytes) lies past the end")
  end)

  it("image size not a multiple of 512, or beyond what the tables map", function()
    local p = good_image(dir, "size.qed")
    patch(p, 48, le(1000, 8))
    assert_open_fails(p, "CORRUPT", "image size 1000 is not a multiple of 512 bytes")
    patch(p, 48, le((4 << 30) + 512, 8)) -- 4 KiB clusters, 2-cluster tables: 4 GiB
    assert_open_fails(p, "CORRUPT", "exceeds what the tables can map (4294967296 bytes")
    patch(p, 48, le(1 << 62 | 512, 8))
    assert_open_fails(p, "CORRUPT", "exceeds what the tables can map")
  end)

  it("backing file name outside the header, too long, or with a NUL byte", function()
    local base = dir .. "/base.raw"
    U.write_file(base, string.rep("b", 1 << 20))
    local p = good_image(dir, "backing.qed", { backing_file = "base.raw", backing_fmt = "raw" })
    patch(p, 56, le(4090, 4))
    assert_open_fails(p, "CORRUPT", "backing file name at offset 0xffa (8 bytes) lies outside " ..
                      "the header clusters (0x1000 bytes)")
    patch(p, 56, le(64, 4))
    patch(p, 60, le(5000, 4))
    assert_open_fails(p, "CORRUPT", "backing file name is too long (5000 bytes")
    patch(p, 60, le(8, 4))
    patch(p, 66, "\0")
    assert_open_fails(p, "CORRUPT", "backing file name at offset 0x40 contains a NUL byte")
  end)

  it("a file too short for a header", function()
    local p = dir .. "/short.qed"
    U.write_file(p, "QED\0" .. string.rep("\0", 20))
    assert_open_fails(p, "CORRUPT", "file is too short (24 bytes) for a header")
  end)

  it("a missing backing file", function()
    U.write_file(dir .. "/gone.raw", string.rep("g", 4096))
    local p = good_image(dir, "nobase.qed", { backing_file = "gone.raw", backing_fmt = "raw",
                                              size = "1M" })
    os.remove(dir .. "/gone.raw")
    local img, msg, code = vdk.open(p)
    assert.is_nil(img)
    assert.equal("ENOENT", code)
    assert.truthy(msg:find("could not open backing file 'gone.raw'", 1, true), msg)
  end)
end)

describe("damaged QED tables", function()
  local dir
  setup(function() dir = U.tmpdir() end)

  it("an L2 table offset past the end of the file", function()
    local p = good_image(dir, "l2eof.qed")
    patch(p, 4096, le(1 << 40, 8))
    assert_read_fails(p, 0, "CORRUPT",
                      "qed: L2 table offset 0x10000000000 (L1 entry 0) lies past the end of the file")
  end)

  it("an L2 table offset that is unaligned or overlaps the L1 table", function()
    local p = good_image(dir, "l2bad.qed")
    patch(p, 4096, le(16384 + 100, 8))
    assert_read_fails(p, 0, "CORRUPT", "L2 table offset 0x4064 (L1 entry 0) is not a multiple")
    patch(p, 4096, le(8192, 8))
    assert_read_fails(p, 0, "CORRUPT", "L2 table offset 0x2000 (L1 entry 0) overlaps the L1 table")
  end)

  it("a data cluster offset unaligned, in the header, past the end", function()
    local p = good_image(dir, "data.qed")
    local l2 = read_le64(p, 4096)
    assert.equal(16384, l2)
    patch(p, l2, le(12288 + 7, 8))
    assert_read_fails(p, 0, "CORRUPT", "data cluster offset 0x3007 (entry 0 of the L2 table " ..
                      "at 0x4000) is not a multiple of the cluster size")
    patch(p, l2, le(0, 7) .. "\2") -- 2^57
    assert_read_fails(p, 0, "CORRUPT", "data cluster offset 0x200000000000000", "past the end")
    patch(p, l2, le(4096, 8))
    assert_read_fails(p, 0, "CORRUPT", "data cluster offset 0x1000", "overlaps the L1 table")
  end)

  it("a writable open of a damaged table asks for a repair, which clears it", function()
    local p = good_image(dir, "rw.qed")
    patch(p, read_le64(p, 4096), le(1 << 45, 8))
    local img = assert(vdk.open(p, { readonly = false }))
    local r, msg, code = img:write(100, "x")
    assert.is_nil(r)
    assert.equal("CORRUPT", code, msg)
    img:close()
    assert.equal(2, read_le64(p, 16) & 2) -- need-check stays set
    img = assert(vdk.open(p, { readonly = false }))
    assert.equal(string.rep("\0", 4096), img:read(0, 4096))
    assert(img:write(100, "x"))
    img:close()
    -- No corruption left (the lost data cluster may stay leaked: exit 3).
    local _, out, code = U.run("qemu-img check %s", U.q(p))
    assert(code == 0 or code == 3, out)
  end)
end)
