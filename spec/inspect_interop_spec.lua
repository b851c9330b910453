-- spec/inspect_interop_spec.lua: the inspection helpers agree with qemu-img
-- on the interop image set (images qemu-img/qemu-io make with each option
-- that changes the layout, QED included): header fields with qemu-img info,
-- cluster figures with qemu-img check, decoded L2 entries and explain with
-- qemu-img map, snapshots with qemu-img snapshot -l, refcounts and the
-- reverse map with the L2 tables; damaged entries are reported, not fatal.
local U = require "support.util"
local vdk = require "vdk"

local cjson = U.cjson()
local KiB, MiB = 1024, 1024 * 1024

local function qjson(fmt, ...)
  return cjson.decode(U.must(fmt, ...))
end

-- The workload every image gets: data, zeros, compressed, holes.
local WORK = "-c 'write -P 0x11 0 300k' -c 'write -z 1M 256k' -c 'write -c -P 0x22 2M 128k' "
  .. "-c 'write -P 0x33 5M 4k' -c 'write -P 0x44 7M 192k'"

local SET = {
  { name = "default", opts = "" },
  { name = "v2", opts = "compat=0.10" },
  { name = "small clusters", opts = "cluster_size=4096" },
  { name = "extended L2", opts = "extended_l2=on,cluster_size=128k" },
  { name = "zstd, lazy refcounts", opts = "compression_type=zstd,lazy_refcounts=on" },
  { name = "refcount bits 1", opts = "refcount_bits=1" },
  { name = "preallocated metadata", opts = "preallocation=metadata",
    work = "-c 'write -P 0x11 0 300k' -c 'write -z 1M 256k' -c 'write -P 0x44 7M 192k'" },
}

local dir
setup(function() dir = U.tmpdir() end)

local function make(entry)
  local path = ("%s/%s.qcow2"):format(dir, entry.name:gsub("[^%w]", "_"))
  U.must("qemu-img create -q -f qcow2 %s %s 8M", entry.opts ~= "" and ("-o " .. entry.opts) or "",
    U.q(path))
  U.must("qemu-io %s %s", entry.work or WORK, U.q(path))
  return path
end

-- qemu-img map's extents at depth 0, as {start, length, kind, offset}.
local function qmap(path)
  local list = {}
  for _, e in ipairs(qjson("qemu-img map --output=json %s", U.q(path))) do
    list[#list + 1] = e
  end
  return list
end

for _, entry in ipairs(SET) do
  describe("qcow2 " .. entry.name, function()
    local path, img
    setup(function()
      path = make(entry)
      img = assert(vdk.open(path))
    end)
    teardown(function() if img then img:close() end end)

    it("header matches qemu-img info", function()
      local info = qjson("qemu-img info --output=json %s", U.q(path))
      local h = assert(img:header())
      assert.equal(info["cluster-size"], h.cluster_size)
      assert.equal(info["virtual-size"], h.size)
      local spec = info["format-specific"].data
      assert.equal(spec.compat == "0.10" and 2 or 3, h.version)
      assert.equal(spec["refcount-bits"], h.refcount_bits)
      if spec["compression-type"] then assert.equal(spec["compression-type"], h.compression_type) end
      assert.equal(spec["extended-l2"] or false, h.extended_l2)
      local lazy = false
      for _, f in ipairs(h.features) do
        if f.type == "compatible" and f.bit == 0 then
          lazy = true
          assert.equal("lazy refcounts", f.name)
          assert.equal("feature table", f.name_from)
        end
      end
      assert.equal(spec["lazy-refcounts"] or false, lazy)
      assert.truthy(tostring(h):find("cluster_size", 1, true))
    end)

    it("cluster figures match qemu-img check", function()
      local _, out = U.run("qemu-img check --output=json %s", U.q(path))
      local c = cjson.decode(out)
      local st = assert(img:stats())
      assert.equal(c["total-clusters"], st.total_clusters)
      assert.equal(c["allocated-clusters"], st.allocated_clusters)
      -- qemu-img leaves out the fragmentation figures when nothing is allocated.
      assert.equal(c["fragmented-clusters"] or 0, st.fragmented_clusters)
      assert.equal(c["compressed-clusters"] or 0, st.compressed_clusters)
      assert.equal(c["image-end-offset"], st.image_end_offset)
    end)

    it("L2 entries and explain agree with qemu-img map", function()
      local h = assert(img:header())
      local by_guest, tables = {}, {}
      local function entry_at(off)
        local l1i = off // h.l2_coverage
        if not tables[l1i] then
          tables[l1i] = assert(img:l2{ guest_offset = off })
          for _, e in ipairs(tables[l1i].entries or {}) do by_guest[e.guest_offset] = e end
        end
        return by_guest[off - off % h.cluster_size]
      end
      local cs = h.cluster_size
      for _, m in ipairs(qmap(path)) do
        -- Probe the first and the last cluster of the extent.
        for _, off in ipairs({ m.start, m.start + m.length - 1 }) do
          local ex = assert(img:explain(off))
          local r = ex.layers[1].result
          local e = entry_at(off)
          if m.data and m.offset then
            assert.equal("data", r.kind, ("0x%x"):format(off))
            assert.equal(m.offset + (off - m.start), r.host_offset)
            assert.truthy(e and e.host_offset, ("no L2 entry for 0x%x"):format(off))
          elseif m.data then
            assert.equal("compressed", r.kind)
            assert.equal("compressed", e.kind)
            assert.truthy(e.compressed_size > 0 and e.compressed_size <= cs + 512)
          elseif m.zero and m.present then
            assert.equal("zero", r.kind)
          else
            assert.equal("unallocated", r.kind)
          end
          -- The bytes shown are the bytes the image reads.
          assert.equal(img:read(off, math.min(16, img.size - off)), ex.bytes)
        end
      end
      if h.extended_l2 then
        local sub
        for _, e in ipairs(assert(img:l2(0)).entries) do sub = sub or e.subclusters end
        assert.truthy(sub and #sub.map == 32)
      end
    end)

    it("refcounts and the reverse map agree with the tables", function()
      local l2 = assert(img:l2(0))
      local seen = 0
      for _, e in ipairs(l2.entries) do
        if e.kind == "data" and e.host_offset then
          local rc = assert(img:refcount(e.host_offset))
          assert.equal(1, rc.refcount)
          local rm = assert(img:refmap(e.host_offset))
          assert.equal(rc.refcount, rm.expected_refcount)
          local found = false
          for _, r in ipairs(rm.references) do
            if r.what == "data" and r.guest_offset == e.guest_offset then found = true end
          end
          assert.truthy(found, ("refmap misses guest 0x%x"):format(e.guest_offset))
          seen = seen + 1
          if seen > 3 then break end
        end
      end
      assert.truthy(seen > 0)
      -- The header cluster is referenced by the header.
      local rm = assert(img:refmap(0))
      assert.equal("header", rm.references[1].what)
      assert.equal(rm.refcount, rm.expected_refcount)
    end)
  end)
end

describe("qcow2 snapshots and backing chains", function()
  it("lists the snapshot table as qemu-img snapshot -l does", function()
    local path = dir .. "/snap.qcow2"
    U.must("qemu-img create -q -f qcow2 %s 4M", U.q(path))
    U.must("qemu-io -c 'write -P 1 0 64k' %s", U.q(path))
    U.must("qemu-img snapshot -c first %s", U.q(path))
    U.must("qemu-io -c 'write -P 2 0 64k' %s", U.q(path))
    U.must("qemu-img snapshot -c second %s", U.q(path))
    local img <close> = assert(vdk.open(path))
    local t = assert(img:snapshot_table())
    assert.equal(2, t.count)
    local listing = U.must("qemu-img snapshot -l %s", U.q(path))
    for _, s in ipairs(t.snapshots) do
      assert.truthy(listing:find("\n" .. s.id .. "%s+" .. s.name), listing)
      assert.equal(4 * MiB, s.disk_size)
    end
    -- The first snapshot's data cluster: shared (refcount 1, first L2 COW'd
    -- at the second write) and referenced from the snapshot's L2 table.
    local l2 = assert(img:l2(0, { snapshot = "first" }))
    local host = l2.entries[1].host_offset
    local rm = assert(img:refmap(host))
    assert.equal(rm.refcount, rm.expected_refcount)
    local owners = {}
    for _, r in ipairs(rm.references) do if r.what == "data" then owners[#owners + 1] = r.owner end end
    assert.truthy(#owners >= 1)
    assert.truthy(table.concat(owners, ","):find("snapshot 1 %(first%)"), table.concat(owners, ","))
    -- explain through the snapshot's L1 table finds the old data.
    local ex = assert(img:explain(0, { snapshot = "first" }))
    assert.equal(host, ex.layers[1].result.host_offset)
    assert.equal("snapshot 1 (first)", img:inspect("explain", 0, 0).owner)
    local now = assert(img:explain(0))
    assert.are_not.equal(host, now.layers[1].result.host_offset)
    assert.equal(("\2"):rep(16), now.bytes)
    -- Check figures with snapshots.
    local _, out = U.run("qemu-img check --output=json %s", U.q(path))
    local c = cjson.decode(out)
    assert.equal(c["allocated-clusters"], img:stats().allocated_clusters)
    assert.equal(c["image-end-offset"], img:stats().image_end_offset)
  end)

  it("explains an offset through a backing chain to the layer that holds it", function()
    local base, mid, top = dir .. "/b.raw", dir .. "/m.qcow2", dir .. "/t.qcow2"
    U.must("qemu-img create -q -f raw %s 4M && qemu-io -f raw -c 'write -P 0xaa 0 1M' %s",
      U.q(base), U.q(base))
    U.must("qemu-img create -q -f qcow2 -b %s -F raw %s", U.q(base), U.q(mid))
    U.must("qemu-io -c 'write -P 0xbb 64k 64k' %s", U.q(mid))
    U.must("qemu-img create -q -f qcow2 -b %s -F qcow2 %s", U.q(mid), U.q(top))
    U.must("qemu-io -c 'write -z 128k 64k' %s", U.q(top))
    local img <close> = assert(vdk.open(top))
    local ex = assert(img:explain(0x10010))
    assert.equal(2, #ex.layers)
    assert.equal(1, ex.answer.depth)
    assert.equal("data", ex.answer.kind)
    assert.equal(("\xbb"):rep(16), ex.bytes)
    ex = assert(img:explain(5))
    assert.equal(3, #ex.layers)
    assert.equal(2, ex.answer.depth)
    assert.equal("raw", ex.layers[3].format)
    assert.equal(("\xaa"):rep(16), ex.bytes)
    ex = assert(img:explain(0x20000))
    assert.equal(0, ex.answer.depth)
    assert.equal("zero", ex.answer.kind)
    local text = tostring(img:explain(0x10010))
    assert.truthy(text:find("layer 1: .*m%.qcow2"), text)
    assert.truthy(text:find("answer: data, from layer 1"), text)
    local chain = img:chain()
    assert.equal(3, #chain)
    -- The allocation summary, per layer and as seen, against qemu-img map.
    local a = assert(img:allocation())
    assert.equal(64 * KiB, a.layers[1].zero)
    assert.equal(64 * KiB, a.layers[2].data)
    local seen_total = a.seen.data + a.seen.zero + a.seen.unallocated + a.seen.compressed
    assert.equal(img.size, seen_total)
  end)

  it("reports a damaged L2 entry without failing the whole table", function()
    local path = dir .. "/bad.qcow2"
    U.must("qemu-img create -q -f qcow2 %s 4M && qemu-io -c 'write 0 128k' %s", U.q(path), U.q(path))
    local img = assert(vdk.open(path))
    local l1 = assert(img:l1())
    local l2off = l1.entries[1].l2_offset
    img:close()
    -- Entry 1: an unaligned host offset.
    local f = assert(io.open(path, "r+b"))
    f:seek("set", l2off + 8)
    f:write("\x80\x00\x00\x00\x00\x05\x02\x00")
    f:close()
    img = assert(vdk.open(path))
    local l2 = assert(img:l2(0))
    assert.equal(1, l2.counts.invalid)
    assert.truthy(l2.entries[2].error:find("unaligned"), l2.entries[2].error)
    assert.equal("data", l2.entries[1].kind)
    local ok, msg = img:explain(65536)
    assert.falsy(ok)
    assert.truthy(msg:find("unaligned"), msg)
    img:close()
  end)
end)

describe("QED", function()
  local path, img
  setup(function()
    local base = dir .. "/qb.raw"
    U.must("qemu-img create -q -f raw %s 8M && qemu-io -f raw -c 'write -P 0xcc 0 4M' %s",
      U.q(base), U.q(base))
    path = dir .. "/q.qed"
    U.must("qemu-img create -q -f qed -b %s -F raw %s", U.q(base), U.q(path))
    U.must("qemu-io -f qed -c 'write -P 0x11 0 300k' -c 'write -z 1M 256k' "
      .. "-c 'write -P 0x33 5M 4k' %s", U.q(path))
    img = assert(vdk.open(path))
  end)
  teardown(function() img:close() end)

  it("header, stats and tables agree with qemu-img", function()
    local h = assert(img:header())
    local info = qjson("qemu-img info --output=json %s", U.q(path))
    assert.equal(info["cluster-size"], h.cluster_size)
    assert.equal(info["virtual-size"], h.image_size)
    local names = {}
    for _, f in ipairs(h.features) do names[#names + 1] = f.name end
    assert.truthy(table.concat(names, ","):find("backing file", 1, true))
    local _, out = U.run("qemu-img check --output=json %s", U.q(path))
    local c = cjson.decode(out)
    local st = assert(img:stats())
    assert.equal(c["total-clusters"], st.total_clusters)
    assert.equal(c["allocated-clusters"], st.allocated_clusters)
    if c["image-end-offset"] then assert.equal(c["image-end-offset"], st.image_end_offset) end
    local l1 = assert(img:l1())
    assert.equal(1, l1.allocated)
    local l2 = assert(img:l2(0))
    for _, m in ipairs(qmap(path)) do
      local ex = assert(img:explain(m.start))
      if m.depth == 0 and m.data then
        assert.equal("data", ex.layers[1].result.kind)
        assert.equal(m.offset, ex.layers[1].result.host_offset)
      elseif m.depth == 0 and m.zero then
        assert.equal("zero", ex.answer.kind)
      elseif m.depth == 1 then
        assert.equal(1, ex.answer.depth)
      end
      assert.equal(img:read(m.start, 16), ex.bytes)
    end
    assert.truthy(l2.counts.data > 0 and l2.counts.zero > 0)
    local host = l2.entries[1].host_offset
    local rm = assert(img:refmap(host))
    assert.equal(1, rm.count)
    assert.equal(0, rm.references[1].guest_offset)
  end)
end)

describe("inspection of damaged images", function()
  -- Seeded damage to the metadata of small images; every query answers with
  -- a table or nil, message, code (never a crash, a hang or a raise).
  local function queries(img)
    local calls = {
      function() return img:header() end,
      function() return img:extensions() end,
      function() return img:snapshot_table() end,
      function() return img:l1() end,
      function() return img:stats() end,
      function() return img:layout() end,
      function() return img:allocation() end,
    }
    for i = 0, 3 do
      calls[#calls + 1] = function() return img:l2(i) end
      calls[#calls + 1] = function() return img:refmap(i * 65536) end
      calls[#calls + 1] = function() return img:refcount(i * 65536) end
    end
    for _, off in ipairs({ 0, 65536, 1 << 20, img.size - 1 }) do
      calls[#calls + 1] = function() return img:explain(off) end
      calls[#calls + 1] = function() return img:l2{ guest_offset = off } end
    end
    for _, f in ipairs(calls) do
      local ok, t, msg = pcall(f)
      assert.truthy(ok, tostring(t))
      assert.truthy(type(t) == "table" or type(msg) == "string", tostring(msg))
      if type(t) == "table" then tostring(t) end
    end
  end

  for _, fmt in ipairs({ "qcow2", "qed" }) do
    it(fmt .. ": 60 mutants", function()
      local good = ("%s/good.%s"):format(dir, fmt)
      U.must("qemu-img create -q -f %s %s 4M", fmt, U.q(good))
      U.must("qemu-io -f %s -c 'write -P 1 0 128k' -c 'write -z 1M 64k' %s", fmt, U.q(good))
      if fmt == "qcow2" then
        U.must("qemu-io -c 'write -c -P 2 2M 64k' %s && qemu-img snapshot -c s %s", U.q(good), U.q(good))
      end
      local data = U.read_file(good)
      local limit = math.min(#data, 6 * 65536)
      local seed = 12345
      local function rand(n)
        seed = (seed * 1103515245 + 12345) % 2147483648
        return seed % n
      end
      local bad = ("%s/bad.%s"):format(dir, fmt)
      for _ = 1, 60 do
        local bytes = { data:byte(1, -1) }
        for _ = 1, 1 + rand(8) do
          local at = 1 + rand(limit)
          bytes[at] = rand(256)
        end
        local chunks = {}
        for i = 1, #bytes, 4096 do
          chunks[#chunks + 1] = string.char(table.unpack(bytes, i, math.min(i + 4095, #bytes)))
        end
        U.write_file(bad, table.concat(chunks))
        local img = vdk.open(bad, { format = fmt, backing = false })
        if img then
          queries(img)
          img:close()
        end
      end
    end)
  end
end)
