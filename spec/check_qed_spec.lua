-- spec/check_qed_spec.lua: `vdk check` on QED images damaged by patching
-- bytes of a valid one, against qemu-img check 7.2: the same summary (human
-- and JSON) and exit status; `-r all` leaves an image qemu-img check and a
-- second vdk check find clean; --dry-run writes nothing.
local U = require "support.util"

local function u64(s, off) return (string.unpack("<I8", s, off + 1)) end
local function u32(s, off) return (string.unpack("<I4", s, off + 1)) end

local function patch(path, off, v)
  local f = assert(io.open(path, "r+b"))
  f:seek("set", off)
  f:write(string.pack("<I8", v))
  f:close()
end

local function base(dir, name)
  local p = dir .. "/" .. name
  U.must("qemu-img create -q -f qed -o cluster_size=65536 %s 64M", U.q(p))
  U.must("qemu-io -c 'write -P 1 0 256k' -c 'write -P 2 4M 64k' %s", U.q(p))
  local s = U.read_file(p)
  local l1 = u64(s, 40)
  return p, { s = s, cs = u32(s, 4), l1 = l1, l2 = u64(s, l1), size = #s }
end

local DAMAGES = {
  { "leaked cluster", function(p, L)
    U.must("truncate -s %d %s", L.size + L.cs, U.q(p))
  end, code = 3 },
  { "L2 entry past the end", function(p, L) patch(p, L.l2 + 8, 1 << 40) end },
  { "L2 entry unaligned", function(p, L) patch(p, L.l2 + 8, u64(L.s, L.l2) + 512) end },
  { "cluster referenced twice", function(p, L) patch(p, L.l2 + 8, u64(L.s, L.l2)) end },
  { "data cluster over the L1 table", function(p, L) patch(p, L.l2 + 8, L.l1) end },
  { "L1 entry past the end", function(p, L) patch(p, L.l1, 1 << 40) end },
}

describe("vdk check on damaged QED images", function()
  local dir = U.tmpdir()
  for i, d in ipairs(DAMAGES) do
    it("reports " .. d[1] .. " as qemu-img check does, and repairs it", function()
      local p, L = base(dir, ("q%d.qed"):format(i))
      d[2](p, L)
      local qc, qout = U.run3("qemu-img check %s", U.q(p))
      local vc, vout = U.vdk_cmd("check", p)
      assert.are.equal(qout, vout)
      assert.are.equal(qc, vc)
      assert.are.equal(d.code or 2, vc)
      local _, qj = U.run3("qemu-img check --output=json %s", U.q(p))
      local _, vj = U.vdk_cmd("check", "--output=json", p)
      assert.are.equal(qj, vj)
      local before = U.read_file(p)
      local dc = U.vdk_cmd("check", "--dry-run", p)
      assert.are.equal(vc, dc)
      assert.are.equal(before, U.read_file(p))
      local rc, rout = U.vdk_cmd("check", "-r", "all", p)
      assert.are.equal(0, rc, rout)
      local ok, out = U.run("qemu-img check %s", U.q(p))
      assert.is_true(ok, out)
      assert.truthy(out:find("No errors were found on the image.", 1, true), out)
      assert.are.equal(0, (U.vdk_cmd("check", p)))
    end)
  end
end)
