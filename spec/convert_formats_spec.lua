-- spec/convert_formats_spec.lua: vdk convert in every direction among raw
-- and qcow2 (every create option), from images qemu-img and qemu-io made.
-- Every result must be identical under qemu-img compare, clean under
-- qemu-img check, and keep the source's holes (qemu-img map shows no data
-- in a target cluster where the source had none).
local U = require "support.util"
local X = require "support.copy_util"

local dir = U.tmpdir()
local SOURCES = {}

local function source(name, make)
  local path = dir .. "/" .. name
  make(path)
  SOURCES[#SOURCES + 1] = { name = name, path = path }
end

-- Sources: raw, and qcow2 with each layout feature reading must handle.
source("mixed.raw", function(p) X.mixed_raw(p, "8M") end)
source("default.qcow2", function(p) X.mixed_qcow2(p, "8M") end)
source("v2-512.qcow2", function(p) X.mixed_qcow2(p, "8M", "compat=0.10,cluster_size=512") end)
source("c2m.qcow2", function(p) X.mixed_qcow2(p, "8M", "cluster_size=2M") end)
source("extl2.qcow2", function(p) X.mixed_qcow2(p, "8M", "extended_l2=on") end)
source("zstd.qcow2", function(p) X.mixed_qcow2(p, "8M", "compression_type=zstd") end)
source("rc1.qcow2", function(p) X.mixed_qcow2(p, "8M", "refcount_bits=1") end)
source("odd.raw", function(p)
  X.sh("qemu-img create -q -f raw %s 3000000", U.q(p)) -- not a multiple of 512
  X.sh("qemu-io -f raw -c 'write -P 0x44 2990000 10000' %s", U.q(p))
end)
source("chain.qcow2", function(p)
  local base = dir .. "/chain-base.raw"
  X.mixed_raw(base, "8M")
  X.sh("qemu-img create -q -f qcow2 -b chain-base.raw -F raw %s", U.q(p))
  X.sh("qemu-io -c 'write -P 0x55 64k 64k' -c 'write -z 1M 64k' %s", U.q(p))
end)

local n = 0
local function convert(src, fmt, opts)
  n = n + 1
  local dst = ("%s/out%d.%s"):format(dir, n, fmt)
  local args = { "convert", "-q", "-O", fmt }
  for _, a in ipairs(opts or {}) do args[#args + 1] = a end
  args[#args + 1] = src
  args[#args + 1] = dst
  local code, out, err = X.vdk(table.unpack(args))
  assert.equal(0, code, out .. err)
  assert.equal("", out .. err)
  return dst
end

local function grain(fmt, cluster)
  return fmt == "raw" and 4096 or (cluster or 65536)
end

describe("vdk convert between formats", function()
  for _, s in ipairs(SOURCES) do
    for _, fmt in ipairs({ "raw", "qcow2" }) do
      it(("%s -> %s"):format(s.name, fmt), function()
        local dst = convert(s.path, fmt)
        X.assert_same(s.path, dst)
        if fmt == "qcow2" then X.assert_clean(dst) end
        X.assert_holes_kept(s.path, dst, grain(fmt))
      end)
    end
  end
end)

-- Every create option of the foundation issue, from a raw and a qcow2 source.
local TARGET_OPTIONS = {
  { "cluster_size=512", 512 }, { "cluster_size=4k", 4096 }, { "cluster_size=2M", 2 << 20 },
  { "compat=0.10" }, { "compat=1.1" }, { "refcount_bits=1" }, { "refcount_bits=64" },
  { "lazy_refcounts=on" }, { "extended_l2=on" }, { "compression_type=zstd" },
  { "preallocation=metadata" }, { "preallocation=falloc" }, { "preallocation=full" },
}

describe("vdk convert to qcow2 with create options", function()
  for _, o in ipairs(TARGET_OPTIONS) do
    for _, s in ipairs({ SOURCES[1], SOURCES[2] }) do
      it(("%s -> qcow2 -o %s"):format(s.name, o[1]), function()
        local dst = convert(s.path, "qcow2", { "-o", o[1] })
        X.assert_same(s.path, dst)
        X.assert_clean(dst)
        if not o[1]:find("preallocation=f") then
          X.assert_holes_kept(s.path, dst, grain("qcow2", o[2]))
        end
        local info = U.must("qemu-img info %s", U.q(dst))
        local key, value = o[1]:match("^(.-)=(.*)$")
        if key == "cluster_size" then
          assert.truthy(info:find("cluster_size: " .. tostring(o[2]), 1, true), info)
        elseif key == "compat" then
          assert.truthy(info:find("compat: " .. (value == "0.10" and "0.10" or "1.1"), 1, true), info)
        elseif key == "refcount_bits" then
          assert.truthy(info:find("refcount bits: " .. value, 1, true), info)
        end
      end)
    end
  end

  for _, prealloc in ipairs({ "off", "falloc", "full" }) do
    it("mixed.raw -> raw -o preallocation=" .. prealloc, function()
      local dst = convert(SOURCES[1].path, "raw", { "-o", "preallocation=" .. prealloc })
      X.assert_same(SOURCES[1].path, dst)
    end)
  end
end)

describe("vdk convert of a backing chain", function()
  it("flattens a 4-deep chain into one qcow2 image", function()
    local prev = dir .. "/deep0.raw"
    X.mixed_raw(prev, "8M")
    for i = 1, 3 do
      local img = ("%s/deep%d.qcow2"):format(dir, i)
      X.sh("qemu-img create -q -f qcow2 -b %s -F %s %s", U.q(prev), i == 1 and "raw" or "qcow2",
           U.q(img))
      X.sh("qemu-io -c 'write -P %d %dk 64k' -c 'write -z %dM 64k' %s", i, i * 512, i + 3, U.q(img))
      prev = img
    end
    local dst = convert(prev, "qcow2")
    X.assert_same(prev, dst)
    X.assert_clean(dst)
    assert.is_nil(U.must("qemu-img info %s", U.q(dst)):find("backing file"))
  end)
end)
