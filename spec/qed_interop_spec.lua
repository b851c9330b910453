-- spec/qed_interop_spec.lua: QED images move both ways between vdk and
-- qemu-img 7.2.
--   * images qemu-img and qemu-io make (cluster and table sizes, zero
--     clusters from `write -z`, backing files raw, qcow2 and QED) read
--     through vdk exactly as `qemu-img convert -O raw` reads them, and
--     `vdk map`/`vdk info` print what qemu-img prints;
--   * images vdk makes under seeded random workloads (allocating writes,
--     overwrites, zero writes, discards, over a backing file) pass
--     `qemu-img check` and `qemu-img compare` equal to a raw oracle.
local U = require "support.util"
local vdk = require "vdk"

local function sh(fmt, ...) return U.must(fmt, ...) end

-- The whole guest content of an image read through vdk.
local function vdk_bytes(path)
  local img = assert(vdk.open(path))
  local parts, off = {}, 0
  while off < img.size do
    local n = math.min(4 << 20, img.size - off)
    parts[#parts + 1] = assert(img:read(off, n))
    off = off + n
  end
  img:close()
  return table.concat(parts)
end

-- The whole guest content as qemu-img reads it.
local function qemu_bytes(path, dir)
  local raw = dir .. "/qemu-view.raw"
  sh("qemu-img convert -O raw %s %s", U.q(path), U.q(raw))
  local s = U.read_file(raw)
  os.remove(raw)
  return s
end

local function first_difference(a, b)
  if #a ~= #b then return ("lengths %d and %d"):format(#a, #b) end
  for i = 1, #a, 4096 do
    if a:sub(i, i + 4095) ~= b:sub(i, i + 4095) then
      for j = i, i + 4095 do
        if a:byte(j) ~= b:byte(j) then return ("offset %d"):format(j - 1) end
      end
    end
  end
end

local function assert_reads_like_qemu(path, dir)
  local diff = first_difference(vdk_bytes(path), qemu_bytes(path, dir))
  assert(diff == nil, path .. ": vdk and qemu-img differ at " .. tostring(diff))
end

-- `vdk CMD ARGS... path` prints exactly what `qemu-img CMD ARGS... path` does.
local function assert_cli_like_qemu(cmd, args, path)
  local quoted = {}
  for i, a in ipairs(args) do quoted[i] = U.q(a) end
  local expected = U.must("qemu-img %s %s %s", cmd, table.concat(quoted, " "), U.q(path))
  local all = { cmd }
  for _, a in ipairs(args) do all[#all + 1] = a end
  all[#all + 1] = path
  local code, out, err = U.vdk_cmd(table.unpack(all))
  assert.equal(0, code, err)
  assert.equal(expected, out)
end

describe("qemu-img-made QED images", function()
  local dir
  setup(function() dir = U.tmpdir() end)

  local geometries = {
    { cs = "4k", ts = 2 }, { cs = "64k", ts = 4 }, { cs = "16k", ts = 16 },
    { cs = "1M", ts = 2 }, { cs = "8k", ts = 8 },
  }
  for _, g in ipairs(geometries) do
    it(("read identically (cluster_size=%s, table_size=%d)"):format(g.cs, g.ts), function()
      local p = ("%s/q-%s-%d.qed"):format(dir, g.cs, g.ts)
      sh("qemu-img create -q -f qed -o cluster_size=%s,table_size=%d %s 96M", g.cs, g.ts, U.q(p))
      sh("qemu-io -f qed -c 'write -P 0x11 0 100k' -c 'write -P 0x22 5M 3k' " ..
         "-c 'write -z 8M 1M' -c 'write -P 0x33 40M 70k' -c 'write -z 48M 4k' " ..
         "-c 'write -P 0x44 %d 512' -c 'write -P 0x55 %d 4k' %s",
         (96 << 20) - 512, (64 << 20) - 2048, U.q(p))
      assert_reads_like_qemu(p, dir)
      assert_cli_like_qemu("map", { "--output=json" }, p)
      assert_cli_like_qemu("map", {}, p)
      assert_cli_like_qemu("info", { "--output=json" }, p)
      assert_cli_like_qemu("info", {}, p)
      local img = assert(vdk.open(p))
      assert.equal("qed", img.format)
      assert.equal(vdk.parse_size(g.cs), img.cluster_size)
      img:close()
    end)
  end

  it("read identically over raw, qcow2 and QED backing files", function()
    local base = dir .. "/base.raw"
    sh("qemu-img create -q -f raw %s 20M", U.q(base))
    sh("qemu-io -f raw -c 'write -P 0xa1 0 20M' %s", U.q(base))
    sh("qemu-img convert -q -f raw -O qcow2 %s %s", U.q(base), U.q(dir .. "/base.qcow2"))
    sh("qemu-img convert -q -f raw -O qed %s %s", U.q(base), U.q(dir .. "/base.qed"))
    for _, fmt in ipairs({ "raw", "qcow2", "qed" }) do
      local top = ("%s/top-%s.qed"):format(dir, fmt)
      -- The overlay is larger than its backing file: the tail reads zeros.
      sh("qemu-img create -q -f qed -o cluster_size=4k,table_size=2 -b base.%s -F %s %s 24M",
         fmt, fmt, U.q(top))
      sh("qemu-io -f qed -c 'write -P 0x11 100k 10k' -c 'write -z 1M 64k' " ..
         "-c 'write -z %d 1k' -c 'write -P 0x22 %d 4k' -c 'write -z 22M 8k' %s",
         (2 << 20) + 512, (20 << 20) - 2048, U.q(top))
      assert_reads_like_qemu(top, dir)
      assert_cli_like_qemu("map", { "--output=json" }, top)
      local img = assert(vdk.open(top))
      assert.equal("base." .. fmt, img.backing_filename)
      assert.equal(fmt, img.backing.format)
      -- Only the no-probe bit records a format; the others are probed.
      assert.equal(fmt == "raw" and "raw" or nil, img.backing_format)
      -- write -z over backing data made zero clusters: allocated, zero.
      local e = assert(img:block_status(1 << 20, 65536, { top_only = true }))
      assert.is_true(e.present and e.zero and not e.data)
      img:close()
    end
  end)

  it("keep a raw backing file raw even when it looks like an image", function()
    local decoy = dir .. "/decoy.img"
    sh("qemu-img create -q -f qcow2 %s 1M", U.q(decoy))
    local top = dir .. "/over-decoy.qed"
    sh("qemu-img create -q -f qed -b decoy.img -F raw %s 1M", U.q(top))
    local img = assert(vdk.open(top))
    assert.equal("raw", img.backing.format)
    assert.equal("QFI\xfb", img:read(0, 4))
    img:close()
    assert_reads_like_qemu(top, dir)
  end)

  it("with table_size 1, which qemu-img 7.2 cannot open, read through vdk", function()
    local p = dir .. "/ts1.qed"
    sh("qemu-img create -q -f qed -o cluster_size=4k,table_size=1 %s 8M", U.q(p))
    local ok, out = U.run("qemu-img info %s", U.q(p))
    assert.is_false(ok)
    assert.truthy(out:find("QED table offset is invalid", 1, true))
    local img = assert(vdk.open(p, { readonly = false }))
    assert(img:write(3 << 20, "table size one"))
    img:close()
    img = assert(vdk.open(p))
    assert.equal("table size one", img:read(3 << 20, 14))
    img:close()
  end)
end)

-- A seeded workload on a vdk-made image, mirrored into a raw oracle.
local function workload(img, oracle, seed, ops)
  local cs, size = img.cluster_size, img.size
  local x = seed
  local function rnd(n)
    x = (x * 6364136223846793005 + 1442695040888963407) & 0x7fffffffffffffff
    return (x >> 16) % n
  end
  local function put(off, s) oracle[#oracle + 1] = { off, s } end
  for _ = 1, ops do
    local off = rnd(size - 1)
    local len = math.min(1 + rnd(3 * cs), size - off)
    local k = rnd(100)
    if k < 55 then
      local chunk = U.bytes(1021, rnd(1 << 30) + 1)
      local s = chunk:rep(len // #chunk + 1):sub(1, len)
      assert(img:write(off, s))
      put(off, s)
    elseif k < 75 then
      assert(img:write_zeroes(off, len, { unmap = k % 2 == 0 }))
      put(off, string.rep("\0", len))
    elseif k < 90 then
      -- Whole clusters this layer maps read as zeros after a discard.
      local c = (off + cs - 1) // cs * cs
      while c + cs <= off + len do
        local e = assert(img:block_status(c, cs, { top_only = true }))
        if e.present then put(c, string.rep("\0", cs)) end
        c = c + cs
      end
      assert(img:discard(off, len))
    else
      assert(img:flush())
    end
  end
end

-- Write the oracle: the base content, then every recorded change in order.
local function write_oracle(path, size, base, changes)
  local content = base and U.read_file(base):sub(1, size) or ""
  local f = assert(io.open(path, "wb"))
  f:write(content)
  if #content < size then
    f:seek("set", size - 1)
    f:write("\0")
  end
  for _, c in ipairs(changes) do
    f:seek("set", c[1])
    f:write(c[2])
  end
  f:close()
end

describe("vdk-made QED images", function()
  local dir
  setup(function() dir = U.tmpdir() end)

  local cases = {
    { name = "plain-4k", cs = 4096, ts = 2, size = 12 << 20, seed = 1 },
    { name = "plain-64k", cs = 65536, ts = 4, size = 48 << 20, seed = 2 },
    { name = "raw-backing", cs = 4096, ts = 4, size = 10 << 20, seed = 3, backing = "raw" },
    { name = "qed-backing", cs = 16384, ts = 2, size = 16 << 20, seed = 4, backing = "qed" },
    { name = "short-backing", cs = 8192, ts = 2, size = 12 << 20, seed = 5, backing = "raw",
      bsize = 5 << 20 },
  }
  for _, c in ipairs(cases) do
    it(("pass qemu-img check and compare (%s)"):format(c.name), function()
      local p = ("%s/%s.qed"):format(dir, c.name)
      local opts = { format = "qed", size = c.size, cluster_size = c.cs, table_size = c.ts }
      local base_raw
      if c.backing then
        base_raw = ("%s/%s.base.raw"):format(dir, c.name)
        local bsize = c.bsize or c.size
        sh("head -c %d /dev/urandom > %s", bsize, U.q(base_raw))
        local base = base_raw
        if c.backing == "qed" then
          base = ("%s/%s.base.qed"):format(dir, c.name)
          sh("qemu-img convert -q -f raw -O qed %s %s", U.q(base_raw), U.q(base))
        end
        opts.backing_file = base:match("[^/]+$")
        opts.backing_fmt = c.backing
      end
      local img = assert(vdk.create(p, opts))
      local changes = {}
      workload(img, changes, c.seed, 400)
      assert(img:close())
      local oracle = p .. ".oracle"
      write_oracle(oracle, c.size, base_raw, changes)
      local ok, out = U.run("qemu-img check %s", U.q(p))
      assert(ok and out:find("No errors were found", 1, true) and not out:find("leak"), out)
      ok, out = U.run("qemu-img compare -f qed -F raw %s %s", U.q(p), U.q(oracle))
      assert(ok and out:find("Images are identical", 1, true), out)
      local diff = first_difference(vdk_bytes(p), U.read_file(oracle))
      assert(diff == nil, "vdk reads differ from the oracle at " .. tostring(diff))
    end)
  end

  it("print the same map and info as qemu-img", function()
    local p = dir .. "/mapped.qed"
    local img = assert(vdk.create(p, { format = "qed", size = "8M", cluster_size = 4096,
                                       table_size = 2 }))
    assert(img:write(0, U.bytes(10000, 7)))
    assert(img:write(3 << 20, U.bytes(70000, 8)))
    assert(img:write(5 << 20, U.bytes(4096, 9)))
    img:close()
    assert_cli_like_qemu("map", { "--output=json" }, p)
    assert_cli_like_qemu("map", {}, p)
    assert_cli_like_qemu("info", { "--output=json" }, p)
  end)

  it("are created with qemu-img's layout and option checks", function()
    local p = dir .. "/created.qed"
    assert(vdk.create(p, { format = "qed", size = "10G", open = false }))
    local q = dir .. "/created-by-qemu.qed"
    sh("qemu-img create -q -f qed %s 10G", U.q(q))
    assert.equal(U.read_file(q):sub(1, 64), U.read_file(p):sub(1, 64))
    local r, msg, code = vdk.create(p, { format = "qed", size = "1M", cluster_size = 1000 })
    assert.is_nil(r)
    assert.equal("OPTION", code)
    assert.truthy(msg:find("cluster_size", 1, true))
    r, msg, code = vdk.create(p, { format = "qed", size = "1M", table_size = 32 })
    assert.equal("OPTION", code)
    assert.truthy(msg:find("table_size", 1, true))
    r, msg, code = vdk.create(p, { format = "qed", size = "2G", cluster_size = 4096, table_size = 1 })
    assert.equal("TOOBIG", code)
    r, msg, code = vdk.create(p, { format = "qed", size = "1M", preallocation = "full" })
    assert.equal("OPTION", code)
    assert.truthy(msg:find("preallocation", 1, true))
    -- The size may come from the backing file.
    local base = dir .. "/sized.raw"
    U.write_file(base, string.rep("z", 3 << 20))
    local img = assert(vdk.create(p, { format = "qed", backing_file = "sized.raw",
                                       backing_fmt = "raw" }))
    assert.equal(3 << 20, img.size)
    img:close()
  end)
end)
