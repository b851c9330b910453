-- spec/check_qcow2_spec.lua: `vdk check` on qcow2 images damaged by
-- patching bytes of a valid one, against qemu-img check 7.2.
--   * for every kind of damage, vdk check prints what qemu-img check prints
--     on stdout (human and JSON), the same problem lines on stderr, and
--     exits with the same status;
--   * `-r leaks` does and prints what qemu-img's does;
--   * `-r all` leaves an image that qemu-img check and a second vdk check
--     find clean (one pass), with the guest data of every reference it kept;
--   * --dry-run prints the plan and writes nothing.
local U = require "support.util"
local vdk = require "vdk"

local C = 65536

local function u64(s, off) return (string.unpack(">I8", s, off + 1)) end
local function u32(s, off) return (string.unpack(">I4", s, off + 1)) end

local function patch(path, off, fmt, v)
  local f = assert(io.open(path, "r+b"))
  f:seek("set", off)
  f:write(string.pack(fmt, v))
  f:close()
end

-- A qemu-made image: data at 0 (4 clusters), 4M (1), a compressed cluster
-- at 8M; optionally two snapshots.
local function base(dir, name, snapshots)
  local p = dir .. "/" .. name
  U.must("qemu-img create -q -f qcow2 %s 16M", U.q(p))
  U.must("qemu-io -c 'write -P 1 0 256k' -c 'write -P 2 4M 64k' -c 'write -c -P 3 8M 64k' %s",
    U.q(p))
  if snapshots then
    U.must("qemu-img snapshot -c one %s && qemu-io -c 'write -P 4 0 64k' %s && " ..
      "qemu-img snapshot -c two %s", U.q(p), U.q(p), U.q(p))
  end
  return p
end

local function layout(p)
  local s = U.read_file(p)
  local l1 = u64(s, 40)
  local rt = u64(s, 48)
  local l2 = u64(s, l1) & 0x00fffffffffffe00
  return {
    s = s, l1 = l1, rt = rt, l2 = l2, rb = u64(s, rt), l1e = u64(s, l1),
    l2e = function(i) return u64(s, l2 + 8 * i) end,
    snaps = u64(s, 64), size = #s,
  }
end

-- Each damage: a name and a function patching the image at p.
local DAMAGES = {
  { "leaked cluster", function(p, L)
    local k = (L.size + C - 1) // C
    U.must("truncate -s %d %s", (k + 1) * C, U.q(p))
    patch(p, L.rb + 2 * k, ">I2", 1)
  end, code = 3 },
  { "refcount too low", function(p, L) patch(p, L.rb + 2 * ((L.l2e(0) & 0xfffffe00) // C), ">I2", 0) end },
  { "refcount too high", function(p, L) patch(p, L.rb + 2 * ((L.l2e(0) & 0xfffffe00) // C), ">I2", 2) end },
  { "cluster referenced twice", function(p, L) patch(p, L.l2 + 8, ">I8", L.l2e(0)) end },
  { "data over the L1 table", function(p, L) patch(p, L.l2 + 8, ">I8", (1 << 63) | L.l1) end },
  { "data over a refcount block", function(p, L) patch(p, L.l2 + 8, ">I8", (1 << 63) | L.rb) end },
  { "L2 entry past the end", function(p, L) patch(p, L.l2 + 8, ">I8", (1 << 63) | (1 << 30)) end },
  { "L2 entry unaligned", function(p, L) patch(p, L.l2 + 8, ">I8", L.l2e(0) + 512) end },
  { "L1 entry unaligned", function(p, L) patch(p, L.l1, ">I8", L.l1e + 512) end },
  { "L1 entry past the end", function(p, L) patch(p, L.l1, ">I8", (1 << 63) | (1 << 30)) end },
  { "refcount table entry past the end", function(p, L) patch(p, L.rt, ">I8", 1 << 30) end },
  { "COPIED missing in L2", function(p, L) patch(p, L.l2, ">I8", L.l2e(0) & ~(1 << 63)) end },
  { "COPIED missing in L1", function(p, L) patch(p, L.l1, ">I8", L.l1e & ~(1 << 63)) end },
  { "compressed descriptor out of bounds", function(p, L)
    local e = L.l2e(8 * 1024 * 1024 // C)
    patch(p, L.l2 + 8 * (8 * 1024 * 1024 // C), ">I8", (e & ~((1 << 54) - 1)) | (1 << 50))
  end },
  { "COPIED set on a compressed cluster", function(p, L)
    local i = 8 * 1024 * 1024 // C
    patch(p, L.l2 + 8 * i, ">I8", L.l2e(i) | (1 << 63))
  end },
  { "snapshot L1 table unaligned", function(p, L)
    patch(p, L.snaps, ">I8", u64(L.s, L.snaps) + 512)
  end, snapshots = true },
  { "snapshot L1 table too large", function(p, L)
    patch(p, L.snaps + 8, ">I4", 0x1000000)
  end, snapshots = true },
}

-- Damage a fresh copy of a qemu-made image.
local function damaged(dir, i)
  local d = DAMAGES[i]
  local p = base(dir, ("d%d.qcow2"):format(i), d.snapshots)
  d[2](p, layout(p))
  return p
end

local function sorted_lines(s)
  local t = {}
  for line in s:gmatch("[^\n]+") do t[#t + 1] = line end
  table.sort(t)
  return table.concat(t, "\n")
end

local function copy(a, b) U.must("cp %s %s", U.q(a), U.q(b)) end

describe("vdk check on damaged qcow2 images", function()
  local dir = U.tmpdir()

  for i, d in ipairs(DAMAGES) do
    it("reports " .. d[1] .. " as qemu-img check does", function()
      local p = damaged(dir, i)
      local qc, qout, qerr = U.run3("qemu-img check %s", U.q(p))
      local vc, vout, verr = U.vdk_cmd("check", p)
      assert.are.equal(qout, vout)
      assert.are.equal(qc, vc)
      assert.are.equal(sorted_lines(qerr), sorted_lines(verr))
      local _, qj = U.run3("qemu-img check --output=json %s", U.q(p))
      local _, vj = U.vdk_cmd("check", "--output=json", p)
      assert.are.equal(qj, vj)
      assert.are.equal(d.code or 2, vc)
    end)

    it("repairs " .. d[1] .. " in one pass (-r all)", function()
      local p = damaged(dir, i)
      local code, out = U.vdk_cmd("check", "-r", "all", p)
      assert.are.equal(0, code, out)
      local ok, qout = U.run("qemu-img check %s", U.q(p))
      assert.is_true(ok, qout)
      assert.truthy(qout:find("No errors were found on the image.", 1, true), qout)
      local c2, out2 = U.vdk_cmd("check", p)
      assert.are.equal(0, c2, out2)
    end)
  end

  it("does what qemu-img check -r leaks does", function()
    for _, i in ipairs({ 1, 2, 3, 4, 12 }) do
      local p = damaged(dir, i)
      local q = p .. ".q"
      copy(p, q)
      local qc, qout = U.run3("qemu-img check -r leaks %s", U.q(q))
      local vc, vout = U.vdk_cmd("check", "-r", "leaks", p)
      assert.are.equal(qout, vout)
      assert.are.equal(qc, vc)
      local a = U.run3("qemu-img check %s", U.q(p))
      local b = U.run3("qemu-img check %s", U.q(q))
      assert.are.equal(b, a)
    end
  end)

  it("keeps the guest data of the references it keeps", function()
    for _, i in ipairs({ 1, 2, 3, 4, 12, 13, 11 }) do
      local p = damaged(dir, i)
      local before = dir .. "/before.raw"
      U.must("qemu-img convert -O raw %s %s", U.q(p), U.q(before))
      assert.are.equal(0, (U.vdk_cmd("check", "-r", "all", p)))
      U.must("qemu-img compare -f raw %s %s", U.q(before), U.q(p))
    end
  end)

  it("fails like qemu-img when the refcount table entry is unaligned (exit 1)", function()
    local p = base(dir, "rtu.qcow2")
    local L = layout(p)
    patch(p, L.rt, ">I8", L.rb + 512)
    local qc, qout = U.run3("qemu-img check %s", U.q(p))
    local vc, vout, verr = U.vdk_cmd("check", p)
    assert.are.equal(1, qc)
    assert.are.equal(qc, vc)
    assert.are.equal(qout, vout)
    assert.truthy(verr:find("Check failed", 1, true))
    -- qemu-img cannot repair this one; vdk rebuilds the refcounts.
    assert.are.equal(0, (U.vdk_cmd("check", "-r", "all", p)))
    assert.is_true((U.run("qemu-img check %s", U.q(p))))
  end)

  it("fails like qemu-img on a snapshot entry with too much extra data, and repairs it", function()
    local p = base(dir, "sx.qcow2", true)
    local L = layout(p)
    patch(p, L.snaps + 36, ">I4", 5000)
    local qc = U.run3("qemu-img check %s", U.q(p))
    local vc, vout, verr = U.vdk_cmd("check", p)
    assert.are.equal(1, qc)
    assert.are.equal(qc, vc)
    assert.are.equal("", vout)
    assert.truthy(verr:find("Too much extra metadata in snapshot table entry 0", 1, true), verr)
    local rc, rout, rerr = U.vdk_cmd("check", "-r", "all", p)
    assert.are.equal(0, rc, rout .. rerr)
    assert.truthy(rerr:find("Discarding too much extra metadata", 1, true), rerr)
    assert.is_true((U.run("qemu-img check %s", U.q(p))))
    local _, list = U.run("qemu-img snapshot -l %s", U.q(p))
    local n = 0
    for _ in list:gmatch("[^\n]+") do n = n + 1 end
    assert.are.equal(2 + 2, n, list) -- the entries stay (their names were damaged too)
  end)

  it("prints a dry-run plan and writes nothing", function()
    local p = damaged(dir, 4)
    local before = U.read_file(p)
    local code, out, err = U.vdk_cmd("check", "--dry-run", "-r", "all", p)
    assert.are.equal(2, code)
    assert.truthy(out:find("Repair plan (check -r all), nothing was written:", 1, true), out)
    assert.truthy(out:find("refcount", 1, true), out)
    assert.truthy(err:find("ERROR cluster", 1, true), err)
    assert.are.equal(before, U.read_file(p))
  end)

  it("checks clean images like qemu-img (human, JSON, -q) and refuses raw", function()
    local p = base(dir, "clean.qcow2", true)
    for _, args in ipairs({ {}, { "--output=json" }, { "-q" } }) do
      local qa = table.concat(args, " ")
      local qc, qout = U.run3("qemu-img check %s %s", qa, U.q(p))
      local vargs = { "check" }
      for _, a in ipairs(args) do vargs[#vargs + 1] = a end
      vargs[#vargs + 1] = p
      local vc, vout = U.vdk_cmd(table.unpack(vargs))
      assert.are.equal(qout, vout)
      assert.are.equal(qc, vc)
    end
    local raw = dir .. "/r.raw"
    U.must("qemu-img create -q -f raw %s 1M", U.q(raw))
    local code, _, err = U.vdk_cmd("check", "-f", "raw", raw)
    assert.are.equal(63, code)
    assert.truthy(err:find("does not support checks", 1, true), err)
  end)

  it("reports through img:check{} in Lua", function()
    local p = damaged(dir, 3)
    local img = assert(vdk.open(p, { check = true }))
    local r = assert(img:check())
    assert.are.equal(1, r.leaks)
    assert.are.equal(1, r.corruptions)
    assert.are.equal("check", r.mode)
    assert.are.equal("leak", r.problems[1].kind)
    assert.truthy(r.problems[1].message:find("Leaked cluster", 1, true))
    local plan = assert(img:check({ repair = "all", dry_run = true }))
    assert.are.equal("all", plan.mode)
    assert.is_true(plan.dry_run)
    assert.are.equal("free", plan.problems[1].fix)
    img:close()
    img = assert(vdk.open(p, { readonly = false, check = true }))
    local fixed = assert(img:check({ repair = "all" }))
    assert.are.equal(1, fixed["leaks-fixed"])
    assert.are.equal(0, fixed.leaks)
    assert.are.equal(0, assert(img:check()).corruptions)
    img:close()
  end)
end)
