-- spec/random_ops_spec.lua: random sequences of writes, compressed writes
-- and snapshot create / apply / delete (qcow2), zero writes and resizes
-- (both ways) on qcow2 and QED images of several layouts, through the Lua
-- module, checked against a model kept in memory: the disk and every
-- snapshot's view (with its own size) must read as the model says after
-- every few steps, and qemu-img check must find the image clean whenever it
-- is closed. The seeds are fixed, so a failure names the seed and step that
-- reproduce it; the operation log is printed with it.
local U = require "support.util"
local vdk = require "vdk"

local MB = 1024 * 1024

local LAYOUTS = {
  { "64k clusters", { cluster_size = 65536 } },
  { "4k clusters", { cluster_size = 4096 } },
  { "512-byte clusters", { cluster_size = 512 } },
  { "extended L2", { cluster_size = 65536, extended_l2 = true } },
  { "lazy refcounts, 16-bit", { cluster_size = 16384, lazy_refcounts = true } },
  { "64-bit refcounts", { cluster_size = 8192, refcount_bits = 64 } },
  { "2 MiB clusters", { cluster_size = 2097152 } },
  { "v2 (no resize with snapshots)", { cluster_size = 65536, compat = "0.10" } },
  { "QED, 64k clusters", { cluster_size = 65536 }, "qed" },
  { "QED, 4k clusters", { cluster_size = 4096 }, "qed" },
}

-- A tiny deterministic generator (the same sequence on every Lua).
local function rng(seed)
  local x = seed * 2654435761 % 4294967296 + 1
  return function(lo, hi)
    x = (x * 1103515245 + 12345) % 2147483648
    return lo + x % (hi - lo + 1)
  end
end

local function put(s, off, data)
  return s:sub(1, off) .. data .. s:sub(off + #data + 1)
end

local function run(dir, layout, seed, steps)
  local opts = layout[2]
  local format = layout[3] or "qcow2"
  local path = ("%s/r%d.%s"):format(dir, seed, format)
  local cs = opts.cluster_size
  local create = { format = format, size = 4 * MB }
  for k, v in pairs(opts) do create[k] = v end
  local img = assert(vdk.create(path, create))
  local model, snaps, names, log = string.rep("\0", 4 * MB), {}, {}, {}
  local rand = rng(seed)
  local where
  local function ctx() return ("%s, seed %d, %s; log: %s"):format(layout[1], seed, where,
    table.concat(log, "; ", math.max(1, #log - 12))) end

  local function verify()
    assert.equal(#model, img.size, ctx())
    assert.is_true(assert(img:read(0, img.size)) == model, "disk content, " .. ctx())
  end

  local function reopen()
    assert(img:close())
    local ok, out = U.run("qemu-img check %s", U.q(path))
    assert.is_true(ok and out:find("No errors", 1, true) ~= nil, out .. ctx())
    img = assert(vdk.open(path, { readonly = false }))
    verify()
    for name, view in pairs(snaps) do
      local v = assert(vdk.open(path, { force_share = true }))
      assert(v:snapshot_load(name))
      assert.equal(#view, v.size, "snapshot " .. name .. " size, " .. ctx())
      assert.is_true(assert(v:read(0, v.size)) == view, "snapshot " .. name .. ", " .. ctx())
      v:close()
    end
  end

  for step = 1, steps do
    where = "step " .. step
    local r, size = rand(1, 100), img.size
    if r <= 5 and format == "qcow2" and size >= cs then
      local off = rand(0, size // cs - 1) * cs
      local data = string.rep(string.char(rand(1, 255)) .. "compressible", cs // 13 + 1):sub(1, cs)
      log[#log + 1] = ("write compressed %d+%d"):format(off, cs)
      assert(img:write_compressed(off, data))
      model = put(model, off, data)
    elseif r <= 40 then
      local off = rand(0, size // 512 - 1) * 512
      local len = math.min(size - off, rand(1, 3 * cs // 512) * 512)
      local data = string.rep(string.char(rand(1, 255)), len)
      log[#log + 1] = ("write %d+%d"):format(off, len)
      assert(img:write(off, data))
      model = put(model, off, data)
    elseif r <= 50 then
      local off = rand(0, size // 512 - 1) * 512
      local len = math.min(size - off, rand(1, 4 * cs // 512) * 512)
      local unmap = rand(0, 1) == 1
      log[#log + 1] = ("zero %d+%d%s"):format(off, len, unmap and " unmap" or "")
      assert(img:write_zeroes(off, len, { unmap = unmap }))
      model = put(model, off, string.rep("\0", len))
    elseif r <= 60 and format == "qcow2" then
      local name = "s" .. step
      log[#log + 1] = "snapshot " .. name
      assert(img:snapshot_create(name))
      snaps[name], names[#names + 1] = model, name
    elseif r <= 66 and #names > 0 then
      local i = rand(1, #names)
      log[#log + 1] = "delete " .. names[i]
      assert(img:snapshot_delete(names[i]))
      snaps[names[i]] = nil
      table.remove(names, i)
    elseif r <= 72 and #names > 0 then
      local name = names[rand(1, #names)]
      log[#log + 1] = "apply " .. name
      assert(img:snapshot_apply(name))
      model = snaps[name]
    elseif r <= 80 and not (opts.compat == "0.10" and #names > 0) then
      local new = rand(1, 8 * MB // 512) * 512
      log[#log + 1] = ("resize %d -> %d"):format(size, new)
      assert(img:resize(new, { shrink = new < size }))
      model = new < size and model:sub(1, new) or model .. string.rep("\0", new - size)
    elseif r <= 92 then
      verify()
    else
      reopen()
    end
  end
  where = "the end"
  reopen()
  img:close()
end

describe("qcow2 and QED under random operations, snapshots and resizes", function()
  for i, layout in ipairs(LAYOUTS) do
    it("keeps the disk and every snapshot as the model says (" .. layout[1] .. ")", function()
      local dir = U.tmpdir()
      for seed = i * 10, i * 10 + 2 do run(dir, layout, seed, 150) end
    end)
  end
end)
