-- spec/compare_spec.lua: vdk compare against qemu-img compare on the same
-- pairs of images: identical output and exit status (0 equal, 1 different,
-- 2 error), strict mode, differing sizes, formats given with -f/-F.
local U = require "support.util"
local X = require "support.copy_util"

local dir = U.tmpdir()
local function p(name) return dir .. "/" .. name end

local SRC = X.mixed_raw(p("a.raw"), "8M")
X.sh("cp %s %s", U.q(SRC), U.q(p("same.raw")))
X.sh("qemu-img convert -O qcow2 %s %s", U.q(SRC), U.q(p("a.qcow2")))
X.sh("cp %s %s", U.q(SRC), U.q(p("diff.raw")))
X.sh("qemu-io -f raw -c 'write -P 0x5a 5000123 1' %s", U.q(p("diff.raw")))
X.sh("cp %s %s && truncate -s 12M %s", U.q(SRC), U.q(p("long.raw")), U.q(p("long.raw")))
X.sh("cp %s %s", U.q(p("long.raw")), U.q(p("longdiff.raw")))
X.sh("qemu-io -f raw -c 'write -P 0x01 10M 512' %s", U.q(p("longdiff.raw")))
X.sh("qemu-img create -q -f qcow2 %s 8M", U.q(p("empty.qcow2")))
X.sh("qemu-img create -q -f qcow2 %s 8M", U.q(p("zeroed.qcow2")))
X.sh("qemu-io -c 'write -z 0 1M' %s", U.q(p("zeroed.qcow2")))
X.sh("qemu-img create -q -f raw %s 8M", U.q(p("empty.raw")))
X.mixed_qcow2(p("m.qcow2"), "8M")
X.sh("qemu-img convert -O raw %s %s", U.q(p("m.qcow2")), U.q(p("m.raw")))
X.sh("qemu-img create -q -f qcow2 -b m.qcow2 -F qcow2 %s", U.q(p("over.qcow2")))

local CASES = {
  { "a.raw", "same.raw" }, { "a.raw", "a.qcow2" }, { "a.raw", "diff.raw" },
  { "diff.raw", "a.qcow2" }, { "a.raw", "long.raw" }, { "long.raw", "a.raw" },
  { "a.raw", "longdiff.raw" }, { "longdiff.raw", "a.qcow2" }, { "-s", "a.raw", "long.raw" },
  { "-s", "a.raw", "a.qcow2" }, { "-s", "a.raw", "same.raw" }, { "-s", "empty.qcow2", "zeroed.qcow2" },
  { "empty.qcow2", "zeroed.qcow2" }, { "empty.raw", "empty.qcow2" }, { "m.qcow2", "m.raw" },
  { "m.qcow2", "over.qcow2" }, { "-s", "m.qcow2", "over.qcow2" }, { "over.qcow2", "a.raw" },
  { "-q", "a.raw", "diff.raw" }, { "-f", "raw", "-F", "qcow2", "a.raw", "a.qcow2" },
  { "-f", "qcow2", "a.raw", "a.qcow2" }, { "a.raw", "missing.raw" }, { "-U", "a.raw", "a.qcow2" },
  { "-T", "none", "a.raw", "a.qcow2" },
}

describe("vdk compare against qemu-img compare", function()
  for _, case in ipairs(CASES) do
    it(table.concat(case, " "), function()
      local args = {}
      local i = 1
      while i <= #case do
        local w = case[i]
        if w == "-f" or w == "-F" or w == "-T" then
          args[#args + 1] = w .. " " .. case[i + 1]
          i = i + 2
        else
          args[#args + 1] = w:match("^%-") and w or U.q(p(w))
          i = i + 1
        end
      end
      local line = table.concat(args, " ")
      local qcode, qout = U.run3("qemu-img compare " .. line)
      local vcode, vout, verr = U.run3(U.q(U.vdk) .. " compare " .. line)
      assert.equal(qcode, vcode, line .. "\n" .. vout .. verr)
      if qcode ~= 2 then
        assert.equal(qout, vout, line)
        assert.equal("", verr)
      else
        assert.truthy(verr:match("^vdk: Could not open '.-': "), verr)
      end
    end)
  end
end)

describe("vdk compare usage", function()
  it("needs two images (exit 2)", function()
    local code, _, err = X.vdk("compare", p("a.raw"))
    assert.equal(2, code)
    assert.truthy(err:find("Expecting two image file names", 1, true))
  end)

  it("shows progress with -p", function()
    local code, out = X.vdk("compare", "-p", p("a.raw"), p("a.qcow2"))
    assert.equal(0, code)
    assert.truthy(out:find("(100.00/100%)", 1, true) and out:find("Images are identical."), out)
  end)
end)
