-- spec/cli_qemu_compat_spec.lua: `vdk info` and `vdk map` against qemu-img
-- info and map, on a set of images qemu-img makes: raw sparse, qcow2 v2 and
-- v3, zero clusters, preallocated metadata, compressed clusters, and a
-- backing chain qcow2 -> qcow2 -> raw.
--
-- Both JSON outputs are parsed with cjson and compared field by field; when
-- qemu-img prints no field that vdk lacks, the texts must be identical too
-- (same order, same indentation). Human outputs must be identical.
--
-- Fields vdk does not produce (qemu-img prints them only for features vdk
-- does not support):
--   "encrypted"                  encrypted images are not supported
--   format-specific "bitmaps"    persistent dirty bitmaps are not supported
--   format-specific "encrypt"    encrypted images are not supported
local U = require "support.util"

local NOT_PRODUCED = { encrypted = true, bitmaps = true, encrypt = true }

local cjson = U.cjson()

-- Every field qemu printed must be there, equal, unless vdk does not
-- produce it; vdk must print nothing qemu did not. Returns whether any
-- field was skipped.
local function compare(q, v, where)
  local skipped = false
  if type(q) ~= "table" then
    assert.equal(q, v, where)
    return false
  end
  assert.equal("table", type(v), where)
  for k, qv in pairs(q) do
    if NOT_PRODUCED[k] then
      skipped = true
    else
      assert.is_not_nil(v[k], ("%s.%s missing from vdk"):format(where, k))
      skipped = compare(qv, v[k], where .. "." .. tostring(k)) or skipped
    end
  end
  for k in pairs(v) do
    assert.is_not_nil(q[k], ("%s.%s printed by vdk only"):format(where, k))
  end
  return skipped
end

-- Run `vdk ARGS` and `qemu-img ARGS` in dir; both must agree on the exit
-- status and, on success, on the output.
local function agree(dir, args, json)
  local qcode, qout, qerr = U.run3("cd %s && qemu-img %s", U.q(dir), args)
  local vcode, vout, verr = U.run3("cd %s && %s %s", U.q(dir), U.q(U.abspath(U.vdk)), args)
  assert.equal(qcode, vcode, ("exit status of '%s': qemu-img said %s"):format(args, qerr))
  if qcode ~= 0 then
    assert.truthy(verr:match("^vdk: [^\n]+\n$"), verr)
    return
  end
  assert.equal("", verr)
  if json and cjson then
    local skipped = compare(cjson.decode(qout), cjson.decode(vout), args)
    if not skipped then assert.equal(qout, vout, args) end
  else
    assert.equal(qout, vout, args)
  end
end

-- All the info variants for one image file (relative to dir).
local function agree_info(dir, file)
  agree(dir, "info " .. file, false)
  agree(dir, "info --output=json " .. file, true)
  agree(dir, "info --backing-chain " .. file, false)
  agree(dir, "info --backing-chain --output=json " .. file, true)
end

-- All the map variants.
local function agree_map(dir, file)
  agree(dir, "map " .. file, false)
  agree(dir, "map --output=json " .. file, true)
  agree(dir, "map --output=json --start-offset=64k --max-length=1M " .. file, true)
end

local function agree_all(dir, file)
  agree_info(dir, file)
  agree_map(dir, file)
end

local function sh(fmt, ...) return U.must(fmt, ...) end

describe("vdk agrees with qemu-img on raw images", function()
  it("sparse, with data in places", function()
    local dir = U.tmpdir()
    sh("qemu-img create -q -f raw %s/s.raw 64M", dir)
    sh("qemu-io -f raw -c 'write -P 1 1M 64k' -c 'write -P 2 10M 4k' %s/s.raw", dir)
    agree_all(dir, "s.raw")
    agree_all(dir, U.q(dir .. "/s.raw"))
  end)

  it("empty, made by truncate (no block allocated)", function()
    local dir = U.tmpdir()
    sh("truncate -s 10M %s/t.raw", dir)
    agree_all(dir, "-f raw t.raw")
  end)

  it("fully allocated", function()
    local dir = U.tmpdir()
    sh("qemu-img create -q -f raw -o preallocation=full %s/f.raw 2M", dir)
    sh("qemu-io -f raw -c 'write -P 3 0 2M' %s/f.raw", dir)
    agree_all(dir, "f.raw")
  end)

  it("a missing file", function()
    local dir = U.tmpdir()
    agree(dir, "info missing.raw", false)
    agree(dir, "map missing.raw", false)
  end)
end)

describe("vdk agrees with qemu-img on qcow2 images", function()
  it("v3 (compat 1.1) with data, zero clusters and discarded ranges", function()
    local dir = U.tmpdir()
    sh("qemu-img create -q -f qcow2 %s/v3.qcow2 64M", dir)
    sh("qemu-io -f qcow2 -c 'write -P 1 0 128k' -c 'write -z 1M 256k' -c 'write -P 2 2M 64k' "
      .. "-c 'discard 2M 64k' -c 'write -P 3 3M 64k' %s/v3.qcow2", dir)
    agree_all(dir, "v3.qcow2")
  end)

  -- A cluster partly written by qemu-io is a hole in the host file past the
  -- written part. qemu-img map asks the host file only for raw images and
  -- for qcow2 that looks preallocated, so it shows the whole cluster as
  -- data; so does vdk (formats/qcow2/status.c, the same test as QEMU's).
  it("a partly written cluster", function()
    local dir = U.tmpdir()
    sh("qemu-img create -q -f qcow2 %s/part.qcow2 8M", dir)
    sh("qemu-io -f qcow2 -c 'write -P 3 3M 4k' %s/part.qcow2", dir)
    agree_all(dir, "part.qcow2")
  end)

  it("v2 (compat 0.10) with data", function()
    local dir = U.tmpdir()
    sh("qemu-img create -q -f qcow2 -o compat=0.10 %s/v2.qcow2 100M", dir)
    sh("qemu-io -f qcow2 -c 'write -P 1 64k 64k' -c 'write -z 1M 64k' %s/v2.qcow2", dir)
    agree_all(dir, "v2.qcow2")
  end)

  it("small clusters, lazy refcounts, 8-bit refcounts", function()
    local dir = U.tmpdir()
    sh("qemu-img create -q -f qcow2 -o cluster_size=4k,lazy_refcounts=on,refcount_bits=8 %s/o.qcow2 8M", dir)
    sh("qemu-io -f qcow2 -c 'write -P 1 0 12k' -c 'write -P 9 1M 4k' %s/o.qcow2", dir)
    agree_all(dir, "o.qcow2")
  end)

  -- qemu-img map gives unallocated subclusters of an allocated cluster
  -- their host offset (QCOW2_SUBCLUSTER_UNALLOCATED_ALLOC is OFFSET_VALID),
  -- and so does vdk (formats/qcow2/status.c).
  it("extended L2 entries (subclusters)", function()
    local dir = U.tmpdir()
    sh("qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128k %s/e.qcow2 8M", dir)
    sh("qemu-io -f qcow2 -c 'write -P 1 0 4k' -c 'write -P 2 132k 8k' %s/e.qcow2", dir)
    agree_all(dir, "e.qcow2")
  end)

  -- The same over a shorter backing file: past its end the zeros are the
  -- top layer's answer and keep the offset; inside it the backing answers.
  it("extended L2 entries over a shorter backing file", function()
    local dir = U.tmpdir()
    sh("qemu-img create -q -f qcow2 %s/b.qcow2 4M", dir)
    sh("qemu-io -f qcow2 -c 'write -P 7 1M 300k' %s/b.qcow2", dir)
    sh("qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128k -b b.qcow2 -F qcow2 "
       .. "%s/e.qcow2 16M", dir)
    sh("qemu-io -f qcow2 -c 'write -P 1 1M 4k' -c 'write -P 2 6M 8k' -c 'write -z 6200k 4k' "
       .. "-c 'write -P 3 4092k 8k' %s/e.qcow2", dir)
    agree_all(dir, "e.qcow2")
  end)

  it("preallocated metadata", function()
    local dir = U.tmpdir()
    sh("qemu-img create -q -f qcow2 -o preallocation=metadata %s/p.qcow2 10M", dir)
    sh("qemu-io -f qcow2 -c 'write -P 5 1M 64k' %s/p.qcow2", dir)
    agree_all(dir, "p.qcow2")
  end)

  it("compressed clusters (human map fails like qemu-img)", function()
    local dir = U.tmpdir()
    sh("qemu-img create -q -f raw %s/src.raw 4M", dir)
    sh("qemu-io -f raw -c 'write -P 1 0 192k' -c 'write -P 2 2M 64k' %s/src.raw", dir)
    sh("qemu-img convert -c -f raw -O qcow2 %s/src.raw %s/c.qcow2", dir, dir)
    agree_all(dir, "c.qcow2")
  end)

  it("zstd compression type", function()
    local dir = U.tmpdir()
    sh("qemu-img create -q -f raw %s/src.raw 1M", dir)
    sh("qemu-io -f raw -c 'write -P 1 0 64k' %s/src.raw", dir)
    sh("qemu-img convert -c -f raw -O qcow2 -o compression_type=zstd %s/src.raw %s/z.qcow2", dir, dir)
    agree_all(dir, "z.qcow2")
  end)

  it("a backing chain qcow2 -> qcow2 -> raw", function()
    local dir = U.tmpdir()
    sh("qemu-img create -q -f raw %s/base.raw 8M", dir)
    sh("qemu-io -f raw -c 'write -P 1 0 1M' %s/base.raw", dir)
    sh("qemu-img create -q -f qcow2 -b base.raw -F raw %s/mid.qcow2", dir)
    sh("qemu-io -f qcow2 -c 'write -P 2 512k 128k' -c 'write -z 2M 64k' %s/mid.qcow2", dir)
    sh("qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 %s/top.qcow2", dir)
    sh("qemu-io -f qcow2 -c 'write -P 3 576k 8k' -c 'write -P 4 6M 64k' %s/top.qcow2", dir)
    agree_all(dir, "top.qcow2")
    agree_all(dir, U.q(dir .. "/top.qcow2"))
    agree_all(dir, "mid.qcow2")
  end)

  it("a backing file in another folder", function()
    local dir = U.tmpdir()
    sh("mkdir %s/sub && qemu-img create -q -f qcow2 %s/sub/b.qcow2 4M", dir, dir)
    sh("qemu-io -f qcow2 -c 'write -P 1 0 64k' %s/sub/b.qcow2", dir)
    sh("qemu-img create -q -f qcow2 -b sub/b.qcow2 -F qcow2 %s/t.qcow2", dir)
    agree_all(dir, "t.qcow2")
  end)

  it("a missing backing file (info works, map and --backing-chain fail)", function()
    local dir = U.tmpdir()
    sh("qemu-img create -q -f qcow2 %s/gone.qcow2 4M", dir)
    sh("qemu-img create -q -f qcow2 -b gone.qcow2 -F qcow2 %s/t.qcow2", dir)
    os.remove(dir .. "/gone.qcow2")
    agree(dir, "info t.qcow2", false)
    agree(dir, "info --output=json t.qcow2", true)
    agree(dir, "info --backing-chain t.qcow2", false)
    agree(dir, "map t.qcow2", false)
  end)

  it("images made by vdk create", function()
    local dir = U.tmpdir()
    local vdk = U.abspath(U.vdk)
    sh("cd %s && %s create -q -f raw base.raw 4M", dir, vdk)
    sh("cd %s && %s create -q -f qcow2 -b base.raw -F raw top.qcow2", dir, vdk)
    sh("cd %s && %s create -q -f qcow2 -o cluster_size=4k,compat=0.10 v2.qcow2 1M", dir, vdk)
    agree_all(dir, "top.qcow2")
    agree_all(dir, "v2.qcow2")
  end)
end)
