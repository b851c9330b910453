-- spec/qed_convert_spec.lua: converting to and from QED through the copy
-- engine (`vdk convert` and vdk.copy). Every result must read the same as
-- its source (`qemu-img compare`) and, when it is QED, pass `qemu-img
-- check` with no corruption and no leak: raw and qcow2 (data, zero and
-- compressed clusters, a backing chain) into QED with several geometries,
-- in order and with out-of-order writes (-W) and many requests in flight;
-- QED made by qemu-img (zero clusters, a raw backing file) into raw, qcow2
-- and QED; and a QED target on a backing file that keeps unallocated what
-- the backing file already holds.
local U = require "support.util"
local vdk = require "vdk"

local function sh(fmt, ...) return U.must(fmt, ...) end

local function assert_same(a, b)
  local ok, out = U.run("qemu-img compare %s %s", U.q(a), U.q(b))
  assert(ok and out:find("Images are identical", 1, true), ("%s vs %s: %s"):format(a, b, out))
end

local function assert_clean(path)
  local ok, out = U.run("qemu-img check %s", U.q(path))
  assert(ok and out:find("No errors were found", 1, true) and not out:find("leak"),
         ("%s: %s"):format(path, out))
end

local function convert(...)
  local code, out, err = U.vdk_cmd("convert", "-q", ...)
  assert.equal(0, code, out .. err)
end

describe("convert to QED", function()
  local dir, raw, qcow2
  setup(function()
    dir = U.tmpdir()
    raw = dir .. "/src.raw"
    sh("qemu-img create -q -f raw %s 40M", U.q(raw))
    sh("head -c 3M /dev/urandom | dd of=%s conv=notrunc status=none", U.q(raw))
    sh("qemu-io -f raw -c 'write -P 0x61 5M 300k' -c 'write -z 8M 1M' -c 'write -P 0x62 %d 700' %s",
       (40 << 20) - 700, U.q(raw))
    sh("head -c 2M /dev/urandom | dd of=%s bs=1M seek=20 conv=notrunc status=none", U.q(raw))
    qcow2 = dir .. "/src.qcow2"
    sh("qemu-img create -q -f qcow2 %s 24M", U.q(qcow2))
    sh("qemu-io -f qcow2 -c 'write -P 0x11 0 300k' -c 'write -z 1M 256k' " ..
       "-c 'write -c -P 0x22 2M 64k' -c 'write -P 0x33 5M 4k' -c 'write -P 0 6M 64k' %s",
       U.q(qcow2))
  end)

  local variants = {
    { name = "default", args = {} },
    { name = "4k clusters, 2-cluster tables", args = { "-o", "cluster_size=4k,table_size=2" } },
    { name = "1M clusters, 16-cluster tables", args = { "-o", "cluster_size=1M,table_size=16" } },
    { name = "out of order, 16 requests", args = { "-W", "-m", "16", "-o", "cluster_size=8k" } },
    { name = "fully allocated", args = { "-S", "0", "-o", "cluster_size=16k" } },
    { name = "cache=none", args = { "-t", "none", "-o", "table_size=8" } },
  }
  for i, v in ipairs(variants) do
    it("from raw: " .. v.name, function()
      local out = ("%s/raw-%d.qed"):format(dir, i)
      local args = { "-O", "qed" }
      for _, a in ipairs(v.args) do args[#args + 1] = a end
      args[#args + 1] = raw
      args[#args + 1] = out
      convert(table.unpack(args))
      assert_same(raw, out)
      assert_clean(out)
    end)
  end

  it("to the size vdk measure predicts", function()
    local cjson = U.cjson()
    for i, src in ipairs({ raw, qcow2 }) do
      for _, o in ipairs({ "cluster_size=4k,table_size=2", "cluster_size=64k" }) do
        local code, js = U.vdk_cmd("measure", "--output=json", "-O", "qed", "-o", o, src)
        assert.equal(0, code, js)
        local m = cjson and cjson.decode(js) or { required = tonumber(js:match('"required": (%d+)')) }
        local out = ("%s/measured-%d-%s.qed"):format(dir, i, o:gsub("[^%w]", ""))
        convert("-O", "qed", "-o", o, src, out)
        -- Measure counts what block status calls data; the copy also skips
        -- data blocks that are all zeros, so it may need less.
        local f = assert(io.open(out, "rb"))
        local size = f:seek("end")
        f:close()
        assert.truthy(size <= m.required and size > m.required // 2,
                      ("%s: %d bytes, measured %d"):format(out, size, m.required))
      end
    end
    -- An empty image: header, L1 table; fully allocated adds every table
    -- and cluster (64 KiB clusters, 4-cluster tables map 2 GiB each).
    local code, js = U.vdk_cmd("measure", "--output=json", "-O", "qed", "--size", "10G")
    assert.equal(0, code, js)
    assert.truthy(js:find('"required": 327680', 1, true), js)
    assert.truthy(js:find(('"fully-allocated": %d'):format(5 * 65536 + 5 * 262144 + (10 << 30)),
                          1, true), js)
  end)

  it("from qcow2 with zero and compressed clusters", function()
    local out = dir .. "/from-qcow2.qed"
    convert("-O", "qed", "-o", "cluster_size=4k,table_size=4", qcow2, out)
    assert_same(qcow2, out)
    assert_clean(out)
    out = dir .. "/from-qcow2-W.qed"
    convert("-W", "-O", "qed", qcow2, out)
    assert_same(qcow2, out)
    assert_clean(out)
  end)

  it("from a qcow2 overlay, reading its backing chain", function()
    local top = dir .. "/top.qcow2"
    sh("qemu-img create -q -f qcow2 -b src.raw -F raw %s", U.q(top))
    sh("qemu-io -f qcow2 -c 'write -P 0x44 100k 8k' -c 'write -z 5M 64k' %s", U.q(top))
    local out = dir .. "/flat.qed"
    convert("-O", "qed", top, out)
    assert_same(top, out)
    assert_clean(out)
  end)

  it("onto a backing file, keeping unallocated what the backing file holds", function()
    local top = dir .. "/changed.raw"
    sh("cp %s %s", U.q(raw), U.q(top))
    sh("qemu-io -f raw -c 'write -P 0x55 7M 64k' -c 'write -z 100k 4k' %s", U.q(top))
    local out = dir .. "/overlay.qed"
    convert("-O", "qed", "-o", "cluster_size=4k,table_size=2", "-B", "src.raw", "-F", "raw",
            top, out)
    assert_same(top, out)
    assert_clean(out)
    local img = assert(vdk.open(out))
    assert.equal("raw", img.backing_format)
    local allocated = 0
    for e in img:map({ top_only = true }) do
      if e.present then allocated = allocated + e.length end
    end
    img:close()
    -- The changed 64 KiB and a few zeroed ranges, not a copy of 40 MiB.
    assert.truthy(allocated >= 64 * 1024 and allocated <= 4 << 20, "allocated " .. allocated)
  end)
end)

describe("convert from QED", function()
  local dir, qed
  setup(function()
    dir = U.tmpdir()
    local base = dir .. "/base.raw"
    sh("qemu-img create -q -f raw %s 12M", U.q(base))
    sh("qemu-io -f raw -c 'write -P 0x71 0 12M' %s", U.q(base))
    qed = dir .. "/src.qed"
    sh("qemu-img create -q -f qed -o cluster_size=16k,table_size=2 -b base.raw -F raw %s 16M",
       U.q(qed))
    sh("qemu-io -f qed -c 'write -P 0x72 1M 100k' -c 'write -z 2M 64k' -c 'write -z 3M 1000' " ..
       "-c 'write -P 0x73 11M 2M' %s", U.q(qed))
  end)

  for _, fmt in ipairs({ "raw", "qcow2", "qed" }) do
    it("to " .. fmt, function()
      local out = ("%s/out.%s"):format(dir, fmt)
      convert("-O", fmt, qed, out)
      assert_same(qed, out)
      if fmt ~= "raw" then assert_clean(out) end
      out = ("%s/out-W.%s"):format(dir, fmt)
      convert("-W", "-m", "12", "-O", fmt, qed, out)
      assert_same(qed, out)
    end)
  end

  it("through vdk.copy into an existing QED image", function()
    local out = dir .. "/copied.qed"
    local target = assert(vdk.create(out, { format = "qed", size = "16M", cluster_size = 4096,
                                            table_size = 2 }))
    local source = assert(vdk.open(qed))
    local job = assert(vdk.copy({ source = source, target = target, fresh_target = true,
                                  unordered = true, max_requests = 16 }))
    assert(job:wait())
    source:close()
    assert(target:close())
    assert_same(qed, out)
    assert_clean(out)
  end)
end)
