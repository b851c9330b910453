-- spec/cookbook_spec.lua: the scripts of docs/cookbook.md, extracted and
-- run with `vdk run` on a folder of images made by qemu-img.
local U = require "support.util"
local X = require "support.copy_util"

local function scripts()
  local text = U.read_file(U.src .. "/docs/cookbook.md")
  local list = {}
  for code in text:gmatch("```lua\n(.-)```") do list[#list + 1] = code end
  return list
end

describe("docs/cookbook.md", function()
  local dir = U.tmpdir()
  local src, dst = dir .. "/in", dir .. "/out"
  X.sh("mkdir -p %s %s", U.q(src), U.q(dst))
  X.mixed_raw(src .. "/a.raw", "8M")
  X.mixed_qcow2(src .. "/b.qcow2", "8M")
  X.mixed_raw(src .. "/c disk.img", "4M")
  local list = scripts()

  it("has the scripts", function()
    -- The first two are tested here; the others in spec/inspect_cookbook_spec.lua.
    assert.truthy(#list >= 2)
  end)

  it("converts a folder two at a time and prints a summary", function()
    local code, out, err = X.vdk_script(dir, list[1], src, dst)
    assert.equal(0, code, out .. err)
    assert.truthy(out:find("\n3 converted, 0 failed, 20 MiB in all\n$"), out)
    assert.same({ "a.qcow2", "b.qcow2", "c disk.qcow2" }, X.listdir(dst))
    for _, pair in ipairs({ { "a.raw", "a.qcow2" }, { "b.qcow2", "b.qcow2" },
                            { "c disk.img", "c disk.qcow2" } }) do
      X.assert_same(src .. "/" .. pair[1], dst .. "/" .. pair[2])
      X.assert_clean(dst .. "/" .. pair[2])
    end
  end)

  it("reports a failed image and exits 1", function()
    local bad = dir .. "/bad"
    X.sh("mkdir -p %s && cp %s %s/ok.raw", U.q(bad), U.q(src .. "/a.raw"), U.q(bad))
    X.sh("printf 'QFI\\373garbage' > %s/broken.qcow2", U.q(bad))
    local out_dir = dir .. "/out2"
    X.sh("mkdir -p %s", U.q(out_dir))
    local code, out = X.vdk_script(dir, list[1], bad, out_dir)
    assert.equal(1, code)
    assert.truthy(out:find("FAILED  broken.qcow2", 1, true), out)
    assert.truthy(out:find("1 converted, 1 failed", 1, true), out)
  end)

  it("compares two folders", function()
    local a, b = dir .. "/ca", dir .. "/cb"
    X.sh("mkdir -p %s %s", U.q(a), U.q(b))
    X.sh("cp %s %s/x.raw && qemu-img convert -O qcow2 %s %s/x.raw", U.q(src .. "/a.raw"), U.q(a),
         U.q(src .. "/a.raw"), U.q(b))
    local code, out = X.vdk_script(dir, list[2], a, b)
    assert.equal(0, code, out)
    assert.equal("equal   x.raw\n", out)
    X.sh("qemu-io -c 'write -P 9 1M 1' %s/x.raw", U.q(b))
    code, out = X.vdk_script(dir, list[2], a, b)
    assert.equal(1, code)
    assert.equal("content x.raw (first difference at byte 1048576)\n", out)
  end)
end)
