-- spec/qcow2_io_spec.lua: the qcow2 driver through the Lua module: images
-- vdk creates and writes (every creation option, compressed writes, zero
-- writes, discards over backing files, resize) must pass `qemu-img check`,
-- read the same in qemu, and report qemu-img's format-specific info.
local U = require "support.util"
local vdk = require "vdk"

local KiB, MiB = 1024, 1024 * 1024

local function check_clean(path)
  local ok, out = U.run("cd %s && qemu-img check -f qcow2 %s", U.q(U.abspath(path):match("^(.*)/")), U.q(path))
  assert(ok, out)
  assert.falsy(out:find("leak"), out)
  return out
end

-- qemu's view of the guest content.
local function qemu_read(path, off, len)
  local dir = U.tmpdir()
  U.must("qemu-img convert -O raw %s %s", U.q(path), U.q(dir .. "/out.raw"))
  local d = U.read_file(dir .. "/out.raw")
  return off and d:sub(off + 1, off + len) or d
end

local function qemu_info(path)
  local cjson = assert(U.cjson(), "lua-cjson is needed")
  return cjson.decode(U.must("qemu-img info --output=json %s", U.q(path)))
end

describe("qcow2 create", function()
  it("makes the same header, tables and layout as qemu-img", function()
    local dir = U.tmpdir()
    local ours, theirs = dir .. "/v.qcow2", dir .. "/q.qcow2"
    assert(vdk.create(ours, { format = "qcow2", size = "1G", open = false }))
    U.must("qemu-img create -q -f qcow2 %s 1G", U.q(theirs))
    assert.equal(U.read_file(theirs), U.read_file(ours))
    check_clean(ours)
  end)

  for _, o in ipairs({
    { compat = "0.10" },
    { compat = "v3", cluster_size = 512, refcount_bits = 1 },
    { cluster_size = 2 * MiB, refcount_bits = 64 },
    { lazy_refcounts = true, refcount_bits = 8 },
    { extended_l2 = true, compression_type = "zstd" },
    { preallocation = "metadata", cluster_size = 4096 },
    { preallocation = "falloc" },
    { preallocation = "full", cluster_size = 16384, extended_l2 = true },
  }) do
    local desc = {}
    for k, v in pairs(o) do desc[#desc + 1] = k .. "=" .. tostring(v) end
    table.sort(desc)
    it("with " .. table.concat(desc, ","), function()
      local dir = U.tmpdir()
      local path = dir .. "/x.qcow2"
      local opts = { format = "qcow2", size = "3M" }
      for k, v in pairs(o) do opts[k] = v end
      local img = assert(vdk.create(path, opts))
      local data = U.bytes(70000, 3)
      assert(img:write(12345, data))
      assert(img:write_compressed(2 * MiB, string.rep("z", math.min(img.cluster_size, img.size - 2 * MiB))))
      assert(img:close())
      check_clean(path)
      assert.equal(data, qemu_read(path, 12345, #data))
      assert.equal(string.rep("z", 100), qemu_read(path, 2 * MiB, 100))
      local info = qemu_info(path)
      assert.equal(3 * MiB, info["virtual-size"])
      local spec = info["format-specific"].data
      assert.equal(o.compat == "0.10" and "0.10" or "1.1", spec.compat)
      assert.equal(o.refcount_bits or 16, spec["refcount-bits"])
      assert.equal(o.compression_type or "zlib", spec["compression-type"])
      if o.compat ~= "0.10" then
        assert.equal(o.extended_l2 or false, spec["extended-l2"])
        assert.equal(o.lazy_refcounts or false, spec["lazy-refcounts"])
      end
    end)
  end

  it("refuses invalid combinations as qemu-img does", function()
    local dir = U.tmpdir()
    local p = dir .. "/bad.qcow2"
    local cases = {
      { { extended_l2 = true, cluster_size = 4096 }, "16384" },
      { { lazy_refcounts = true, compat = "0.10" }, "Lazy refcounts" },
      { { compression_type = "zstd", compat = "0.10" }, "Non%-zlib" },
      { { refcount_bits = 128 }, "Refcount width" },
      { { cluster_size = 3000 }, "power of two" },
      { { backing_fmt = "raw" }, "without backing file" },
      { { colour = "blue" }, "colour" },
    }
    for _, c in ipairs(cases) do
      local opts = { format = "qcow2", size = "1M", open = false }
      for k, v in pairs(c[1]) do opts[k] = v end
      local r, msg, code = vdk.create(p, opts)
      assert.is_nil(r)
      assert.equal("OPTION", code)
      assert.truthy(msg:find(c[2]), msg)
    end
  end)

  it("takes the size from the backing file", function()
    local dir = U.tmpdir()
    U.must("qemu-img create -q -f qcow2 %s 5M", U.q(dir .. "/base.qcow2"))
    local img = assert(vdk.create(dir .. "/top.qcow2", { format = "qcow2", backing_file = "base.qcow2",
                                                       backing_fmt = "qcow2" }))
    assert.equal(5 * MiB, img.size)
    assert.equal("base.qcow2", img.backing_filename)
    img:close()
    check_clean(dir .. "/top.qcow2")
  end)
end)

describe("qcow2 info", function()
  local function ours(path)
    local code, out, err = U.vdk_cmd("info", "--output=json", path)
    assert.equal(0, code, err)
    return out
  end

  for _, opts in ipairs({ "compat=0.10", "compat=1.1", "lazy_refcounts=on,refcount_bits=4",
                          "extended_l2=on,compression_type=zstd" }) do
    it("prints qemu-img's format-specific fields for " .. opts, function()
      local cjson = assert(U.cjson())
      local dir = U.tmpdir()
      local path = dir .. "/i.qcow2"
      U.must("qemu-img create -q -f qcow2 -o %s %s 1M", opts, U.q(path))
      local q = U.must("qemu-img info --output=json %s", U.q(path))
      local v = ours(path)
      -- Same fields in the same order.
      local function section(s) return s:match('"format%-specific": (%b{})') end
      assert.equal(section(q):gsub("%s+", ""), section(v):gsub("%s+", ""))
      assert.same(cjson.decode(q)["format-specific"], cjson.decode(v)["format-specific"])
      local img = assert(vdk.open(path))
      local fi = assert(img:format_info())
      assert.is_false(fi.dirty)
      assert.is_false(fi.corrupt)
      img:close()
    end)
  end
end)

describe("qcow2 guest operations", function()
  local function image(dir, opts)
    local o = { format = "qcow2", size = "2M", cluster_size = 65536 }
    for k, v in pairs(opts or {}) do o[k] = v end
    return assert(vdk.create(dir .. "/g.qcow2", o)), dir .. "/g.qcow2"
  end

  it("discards to zeros in v3 even over a backing file, to the backing file in v2", function()
    for _, compat in ipairs({ "1.1", "0.10" }) do
      local dir = U.tmpdir()
      U.write_file(dir .. "/base.raw", string.rep("B", 2 * MiB))
      local img, path = image(dir, { compat = compat, backing_file = "base.raw", backing_fmt = "raw" })
      assert(img:write(0, string.rep("T", 4 * 65536)))
      assert(img:discard(65536, 2 * 65536 + 100))
      local want = compat == "1.1" and "\0" or "B"
      assert.equal(string.rep(want, 2 * 65536), img:read(65536, 2 * 65536))
      assert.equal(string.rep("T", 100), img:read(3 * 65536, 100))   -- partial cluster kept
      img:close()
      check_clean(path)
      assert.equal(string.rep(want, 1000), qemu_read(path, 65536, 1000))
    end
  end)

  it("writes zeros as zero clusters, keeping or unmapping the host cluster", function()
    local dir = U.tmpdir()
    local img, path = image(dir)
    assert(img:write(0, string.rep("x", 4 * 65536)))
    assert(img:write_zeroes(0, 65536))
    assert(img:write_zeroes(65536, 65536, { unmap = true }))
    assert(img:write_zeroes(2 * 65536 + 10, 20))
    local kept = assert(img:block_status(0, 65536, { top_only = true }))
    assert.is_true(kept.zero)
    assert.is_not_nil(kept.offset)                 -- preallocated zero cluster
    local unmapped = assert(img:block_status(65536, 65536, { top_only = true }))
    assert.is_true(unmapped.zero)
    assert.is_nil(unmapped.offset)
    assert.equal(string.rep("\0", 20), img:read(2 * 65536 + 10, 20))
    img:close()
    check_clean(path)
    local m = U.must("qemu-img map --output=json %s", U.q(path))
    assert.truthy(m:find('"zero": true'))
  end)

  it("reports compressed clusters and reads them back in qemu", function()
    local dir = U.tmpdir()
    local img, path = image(dir, { compression_type = "zstd" })
    local data = string.rep("compressible ", 65536 // 13 + 1):sub(1, 65536)
    assert(img:write_compressed(65536, data .. data))
    local e = assert(img:block_status(65536, 2 * 65536, { top_only = true }))
    assert.is_true(e.compressed)
    assert.equal(2 * 65536, e.length)
    -- Overwriting a compressed cluster frees it.
    assert(img:write(65536 + 5, "patched"))
    img:close()
    check_clean(path)
    assert.equal(data:sub(1, 5) .. "patched" .. data:sub(13, 100), qemu_read(path, 65536, 100))
  end)

  it("grows and shrinks", function()
    local dir = U.tmpdir()
    local img, path = image(dir, { cluster_size = 512 })
    assert(img:write(0, string.rep("a", 2 * MiB)))
    assert(img:resize(300 * MiB))
    assert(img:write(300 * MiB - 4 * KiB, string.rep("b", 4 * KiB)))
    assert(img:resize(MiB + 512, { shrink = true }))
    assert(img:resize(2 * MiB, { preallocation = "metadata" }))
    assert.equal(string.rep("a", 512), img:read(MiB, 512))
    assert.equal(string.rep("\0", 512), img:read(MiB + 512, 512))
    img:close()
    check_clean(path)
    assert.equal(2 * MiB, qemu_info(path)["virtual-size"])
  end)
end)
