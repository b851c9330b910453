-- spec/crash_record_spec.lua: the crash recorder from Lua
-- (vdk.testing.record): a workload and a repair written through the vdk
-- module are recorded, every prefix of each log and reorderings between
-- flushes are rebuilt with rec:apply, and every state must open read-write
-- (its own recovery), check clean of corruption, and keep the flushed
-- bytes. The heavy runs are C (tests/c/test_crash_replay.c); this spec
-- proves the Lua face works and replays the vdk.check pipeline itself.
local U = require "support.util"
local vdk = require "vdk"
local testing = require "vdk.testing"
local check = require "vdk.check"

local function copy(a, b) U.must("cp %s %s", U.q(a), U.q(b)) end

-- Entry indexes: every prefix, then 3 shuffled subsets after each flush.
local function states(rec, seed)
  local n, out, flushes = rec:count(), {}, {}
  for p = 0, n do
    local t = {}
    for i = 1, p do t[i] = i end
    out[#out + 1] = { idx = t, prefix = p }
  end
  for i = 1, n do
    if rec:entry(i).kind == "flush" then flushes[#flushes + 1] = i end
  end
  flushes[#flushes + 1] = n + 1
  local x, prev = seed, 0
  local function rnd(m)
    x = (x * 1103515245 + 12345) % 2147483648
    return x % m
  end
  for _, f in ipairs(flushes) do
    for _ = 1, 3 do
      local t = {}
      for i = 1, prev do t[i] = i end
      local tail = {}
      for i = prev + 1, f - 1 do
        if rnd(2) == 1 then tail[#tail + 1] = i end
      end
      for i = #tail, 2, -1 do
        local j = rnd(i) + 1
        tail[i], tail[j] = tail[j], tail[i]
      end
      for _, i in ipairs(tail) do t[#t + 1] = i end
      out[#out + 1] = { idx = t, prefix = prev }
    end
    prev = f
  end
  return out
end

local FLUSHED = U.bytes(20000, 5)

local function workload(img, rec)
  assert(img:write(0, FLUSHED))
  assert(img:flush())
  local durable = rec:count()
  for i = 0, 12 do assert(img:write(65536 + i * 9000, U.bytes(5000, i))) end
  assert(img:discard(65536, 16384))
  assert(img:write_zeroes(200000, 8192))
  assert(img:flush())
  for i = 0, 6 do assert(img:write((1 << 20) + i * 7000, U.bytes(3000, i + 50))) end
  return durable
end

describe("crash states recorded from Lua", function()
  local dir = U.tmpdir()
  for _, opts in ipairs({
    { format = "qcow2", size = "4M", cluster_size = 4096, lazy_refcounts = true },
    { format = "qcow2", size = "4M", cluster_size = 65536 },
    { format = "qed", size = "4M", cluster_size = 4096 },
  }) do
    local name = opts.format .. (opts.lazy_refcounts and " lazy" or "") .. " " .. opts.cluster_size
    it(name .. ": every state recovers and keeps the flushed bytes", function()
      local path, start, st = dir .. "/w.img", dir .. "/start.img", dir .. "/state.img"
      assert(vdk.create(path, { format = opts.format, size = opts.size,
        cluster_size = opts.cluster_size, lazy_refcounts = opts.lazy_refcounts, open = false }))
      copy(path, start)
      local rec = testing.record({ path = path })
      local img = assert(vdk.open(path, { readonly = false }))
      local durable = workload(img, rec)
      local crash = rec:count() -- the process dies here: no close
      img:close()
      rec:stop()
      local n = 0
      for _, s in ipairs(states(rec, 7)) do
        local idx = {}
        for _, i in ipairs(s.idx) do if i <= crash then idx[#idx + 1] = i end end
        copy(start, st)
        assert(rec:apply(st, idx))
        local w = assert(vdk.open(st, { readonly = false }))
        assert(w:close())
        local c = assert(check.open(st))
        local r = assert(check.run(c))
        assert.are.equal(0, r.corruptions, check.problems_text(r))
        if s.prefix >= durable then
          assert.are.equal(FLUSHED, c:read(0, #FLUSHED))
        end
        c:close()
        n = n + 1
      end
      assert.is_true(n > 20)
    end)
  end

  it("a recorded repair (check -r all) never leaves an image worse", function()
    local path, start, st = dir .. "/r.qcow2", dir .. "/rstart.qcow2", dir .. "/rstate.qcow2"
    U.must("qemu-img create -q -f qcow2 %s 16M", U.q(path))
    U.must("qemu-io -c 'write -P 1 0 256k' %s", U.q(path))
    -- a cluster referenced twice: L2 entry 1 := entry 0
    local s = U.read_file(path)
    local l1 = string.unpack(">I8", s, 41)
    local l2 = string.unpack(">I8", s, l1 + 1) & 0x00fffffffffffe00
    local f = assert(io.open(path, "r+b"))
    f:seek("set", l2 + 8)
    f:write(s:sub(l2 + 1, l2 + 8))
    f:close()
    local ro = assert(vdk.open(path))
    local want = ro:read(0, 1 << 20)
    ro:close()
    copy(path, start)
    local rec = testing.record({ path = path })
    local img = assert(check.open(path, { repair = true }))
    local _, second = assert(check.repair(img, "all"))
    assert(img:close())
    rec:stop()
    assert.are.equal(0, second.corruptions)
    for _, st_ in ipairs(states(rec, 11)) do
      copy(start, st)
      assert(rec:apply(st, st_.idx))
      local c = assert(check.open(st))
      assert.are.equal(want, c:read(0, 1 << 20))
      c:close()
      c = assert(check.open(st, { repair = true }))
      local _, again = assert(check.repair(c, "all"))
      c:close()
      assert.are.equal(0, again.corruptions)
      assert.are.equal(0, again.leaks)
    end
  end)
end)
