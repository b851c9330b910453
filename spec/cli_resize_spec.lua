-- spec/cli_resize_spec.lua: `vdk resize` against `qemu-img resize` on twin
-- copies of the same image (raw, qcow2 v3 and v2, QED): every call must give
-- the same exit status and standard output, and leave images of the same
-- virtual size and the same content (qemu-img compare), clean under
-- qemu-img check.
local U = require "support.util"

local function virtual_size(path)
  local out = U.must("qemu-img info --output=json %s", U.q(path))
  return tonumber(out:match('"virtual%-size": (%d+)'))
end

-- Run the same resize arguments (ARGS with FILE for the image) on both
-- copies; both tools must agree.
local function agree(q, v, args)
  local qcode, qout = U.run3("qemu-img resize %s", (args:gsub("FILE", U.q(q))))
  local vcode, vout, verr = U.run3("%s resize %s", U.q(U.abspath(U.vdk)),
                                   (args:gsub("FILE", U.q(v))))
  assert.equal(qcode, vcode, "exit status of resize " .. args .. ": " .. verr)
  assert.equal(qout, vout, "output of resize " .. args)
  if vcode ~= 0 then assert.truthy(verr:match("^vdk: "), verr) end
  assert.equal(virtual_size(q), virtual_size(v), "size after resize " .. args)
end

local CASES = {
  { "raw", "-f raw" },
  { "qcow2", "-f qcow2" },
  { "qcow2 v2", "-f qcow2 -o compat=0.10" },
  { "qed", "-f qed" },
}

describe("vdk resize against qemu-img resize", function()
  for _, case in ipairs(CASES) do
    it("grows, shrinks and refuses as qemu-img does (" .. case[1] .. ")", function()
      local dir = U.tmpdir()
      local q, v = dir .. "/q.img", dir .. "/v.img"
      local fmt = case[2]:match("-f (%S+)")
      U.must("qemu-img create -q %s %s 8M", case[2], U.q(q))
      U.must("qemu-io -f %s -c 'write -P 7 0 1M' -c 'write -P 9 6M 1M' %s", fmt, U.q(q))
      U.must("cp %s %s", U.q(q), U.q(v))
      for _, args in ipairs({
        "FILE 16M",                       -- grow, absolute
        "FILE +1M",                       -- grow, relative
        "-q FILE +512",                   -- quiet
        "FILE 4M",                        -- shrink without --shrink: refused
        "--preallocation=falloc FILE 4M", -- preallocation when shrinking: refused
        "FILE -- -32M",                   -- below zero: refused
        "FILE 1x",                        -- not a size
        "--preallocation=bogus FILE 32M", -- unknown mode
        "FILE",                           -- no size
      }) do
        agree(q, v, ("-f %s %s"):format(fmt, args))
      end
      if fmt == "qed" then
        -- qemu-img 7.2 cannot shrink a QED image ("Shrinking images is
        -- currently not supported"); vdk can: shrink both twins with vdk.
        for _, img in ipairs({ q, v }) do
          U.must("%s resize -q -f qed --shrink %s -- -9M", U.q(U.abspath(U.vdk)), U.q(img))
          U.must("%s resize -q -f qed --shrink %s 5M", U.q(U.abspath(U.vdk)), U.q(img))
        end
        assert.equal(5 * 1024 * 1024, virtual_size(v))
        -- grown again, one by each tool: the cut-off data stays gone
        U.must("qemu-img resize -q -f qed %s 12M", U.q(q))
        U.must("%s resize -q -f qed %s 12M", U.q(U.abspath(U.vdk)), U.q(v))
        for _, img in ipairs({ q, v }) do
          local ok, out = U.run("qemu-io -f qed -c 'read -P 0 5M 7M' %s", U.q(img))
          assert.is_true(ok and not out:find("Pattern verification failed", 1, true), out)
        end
        U.must("%s resize -q -f qed --shrink %s 5M", U.q(U.abspath(U.vdk)), U.q(q))
        U.must("%s resize -q -f qed --shrink %s 5M", U.q(U.abspath(U.vdk)), U.q(v))
      else
        agree(q, v, ("-f %s --shrink FILE -- -9M"):format(fmt)) -- shrink, relative
        agree(q, v, ("-f %s --shrink FILE 5M"):format(fmt))     -- shrink, absolute
      end
      agree(q, v, ("-f %s --preallocation=falloc FILE 24M"):format(fmt))
      U.must("qemu-img compare -q -f %s -F %s %s %s", fmt, fmt, U.q(q), U.q(v))
      -- what was kept reads back, what was cut off and grown again is zeros
      -- (QED takes no preallocation: there the last grow was refused by both)
      local tail = virtual_size(v) - 5 * 1024 * 1024
      assert.equal(fmt == "qed" and 0 or 19 * 1024 * 1024, tail)
      local ok, out = U.run("qemu-io -f %s -c 'read -P 7 0 1M' -c 'read -P 0 5M %d' %s",
                            fmt, tail, U.q(v))
      assert.is_true(ok and not out:find("Pattern verification failed", 1, true), out)
      if fmt ~= "raw" then
        ok, out = U.run("qemu-img check -f %s %s", fmt, U.q(v))
        assert.is_true(ok, out)
      end
    end)
  end

  it("names the file when it cannot be opened, and needs the write lock", function()
    local dir = U.tmpdir()
    local code, _, err = U.vdk_cmd("resize", dir .. "/missing.qcow2", "1M")
    assert.equal(1, code)
    assert.truthy(err:find("missing.qcow2", 1, true), err)
    assert.is_nil(err:find("\n.", 1))
  end)
end)
