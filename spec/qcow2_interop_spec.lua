-- spec/qcow2_interop_spec.lua: qcow2 images going both ways between qemu
-- and vdk. Images qemu-img/qemu-io make (each option that changes the
-- layout) read through vdk as `qemu-img convert -O raw` reads them; images
-- vdk converts into, with the same options, compare equal in qemu and pass
-- `qemu-img check`; lazy refcounts, internal snapshots and backing chains
-- survive the round trip. tests/c/test_qcow2_interop.c has the full matrix.
local U = require "support.util"
local vdk = require "vdk"

local MiB = 1024 * 1024

local function raw_of(path)
  local out = path .. ".raw"
  U.must("qemu-img convert -O raw %s %s", U.q(path), U.q(out))
  return U.read_file(out)
end

local function vdk_read_all(path)
  local img = assert(vdk.open(path))
  local parts = {}
  for off = 0, img.size - 1, 4 * MiB do
    parts[#parts + 1] = assert(img:read(off, math.min(4 * MiB, img.size - off)))
  end
  img:close()
  return table.concat(parts)
end

local function check_clean(path)
  local ok, out = U.run("qemu-img check %s", U.q(path))
  assert(ok, out)
  assert.falsy(out:find("leak"), out)
end

local source -- a 6 MiB raw file with data, zeros and holes

setup(function()
  local dir = U.tmpdir()
  source = dir .. "/src.raw"
  local parts = {}
  for i = 0, 95 do
    parts[#parts + 1] = (i % 4 == 3) and string.rep("\0", 65536) or U.bytes(65536, i + 1)
  end
  U.write_file(source, table.concat(parts))
end)

describe("qcow2 images made by qemu", function()
  local recipes = {
    { "v2, 4k clusters", "-o compat=0.10,cluster_size=4k" },
    { "512-byte clusters, 1-bit refcounts", "-o cluster_size=512,refcount_bits=1" },
    { "2 MiB clusters, 64-bit refcounts", "-o cluster_size=2M,refcount_bits=64" },
    { "zlib compressed", "-c" },
    { "zstd compressed, extended L2", "-c -o compression_type=zstd,extended_l2=on" },
    { "lazy refcounts, metadata preallocation", "-o lazy_refcounts=on,preallocation=metadata" },
  }
  for _, r in ipairs(recipes) do
    it("read the same through vdk: " .. r[1], function()
      local dir = U.tmpdir()
      local img = dir .. "/q.qcow2"
      U.must("qemu-img convert -O qcow2 %s %s %s", r[2], U.q(source), U.q(img))
      U.must("qemu-io -f qcow2 -c 'write -P 0x5a 100k 10k' -c 'write -z 1M 64k' -c 'discard 2M 128k' %s",
             U.q(img))
      assert.equal(raw_of(img), vdk_read_all(img))
    end)
  end

  it("with internal snapshots: vdk writes copy-on-write and the snapshot survives", function()
    local dir = U.tmpdir()
    local img = dir .. "/s.qcow2"
    U.must("qemu-img convert -O qcow2 %s %s", U.q(source), U.q(img))
    U.must("qemu-img snapshot -c before %s", U.q(img))
    local h = assert(vdk.open(img, { readonly = false }))
    assert(h:write(4096, string.rep("n", 200000)))
    assert(h:write_zeroes(3 * MiB, MiB, { unmap = true }))
    assert(h:close())
    check_clean(img)
    U.must("qemu-img convert -l snapshot.name=before -O raw %s %s", U.q(img), U.q(dir .. "/snap.raw"))
    assert.equal(U.read_file(source), U.read_file(dir .. "/snap.raw"))
    local now = raw_of(img)
    assert.equal(string.rep("n", 200000), now:sub(4097, 4096 + 200000))
    assert.equal(string.rep("\0", MiB), now:sub(3 * MiB + 1, 4 * MiB))
    U.must("qemu-img snapshot -d before %s", U.q(img))
    check_clean(img)
  end)
end)

describe("qcow2 images made by vdk", function()
  for _, o in ipairs({ "compat=0.10", "cluster_size=512,refcount_bits=2",
                       "cluster_size=2M,extended_l2=on,compression_type=zstd",
                       "lazy_refcounts=on,refcount_bits=32" }) do
    it("convert with -o " .. o .. " (and -c) compares equal in qemu", function()
      local dir = U.tmpdir()
      for _, c in ipairs({ false, true }) do
        local out = dir .. (c and "/c.qcow2" or "/p.qcow2")
        local args = { "convert", "-O", "qcow2", "-o", o }
        if c then args[#args + 1] = "-c" end
        args[#args + 1] = source
        args[#args + 1] = out
        local code, _, err = U.vdk_cmd(table.unpack(args))
        assert.equal(0, code, err)
        check_clean(out)
        U.must("qemu-img compare -f raw -F qcow2 %s %s", U.q(source), U.q(out))
      end
    end)
  end

  it("a chain: qemu reads a vdk overlay over a qemu base and the other way round", function()
    local dir = U.tmpdir()
    U.must("qemu-img convert -O qcow2 %s %s", U.q(source), U.q(dir .. "/base.qcow2"))
    local top = assert(vdk.create(dir .. "/top.qcow2", { format = "qcow2", backing_file = "base.qcow2",
                                                       backing_fmt = "qcow2", cluster_size = 16384,
                                                       extended_l2 = true }))
    assert(top:write(1000, "vdk was here"))
    assert(top:discard(MiB, 64 * 1024))
    assert(top:close())
    check_clean(dir .. "/top.qcow2")
    U.must("qemu-img create -q -f qcow2 -b top.qcow2 -F qcow2 %s", U.q(dir .. "/up.qcow2"))
    U.must("qemu-io -c 'write -P 0x33 5k 1k' %s", U.q(dir .. "/up.qcow2"))
    assert.equal(raw_of(dir .. "/up.qcow2"), vdk_read_all(dir .. "/up.qcow2"))
  end)
end)
