-- spec/inspect_cookbook_spec.lua: the recipes of docs/cookbook.md after
-- the first two (those run in spec/cookbook_spec.lua): convert-verified,
-- verify-backup and why-large, extracted and run with `vdk run` on images
-- made by qemu-img.
local U = require "support.util"

local function recipe(title)
  local text = U.read_file(U.src .. "/docs/cookbook.md")
  local section = text:match("\n## " .. title:gsub("%p", "%%%0") .. "\n(.-)\n## ")
    or text:match("\n## " .. title:gsub("%p", "%%%0") .. "\n(.*)$")
  assert(section, "no section " .. title)
  return assert(section:match("```lua\n(.-)```"), "no script in " .. title)
end

local dir
setup(function() dir = U.tmpdir() end)

local function run(code, ...)
  local script = dir .. "/recipe.lua"
  U.write_file(script, code)
  return U.vdk_cmd("run", script, ...)
end

describe("cookbook: convert, verify, then publish", function()
  it("publishes a verified compressed copy and refuses an existing target", function()
    local src = dir .. "/src.raw"
    U.must("qemu-img create -q -f raw %s 8M && qemu-io -f raw -c 'write -P 0x61 0 2M' %s",
      U.q(src), U.q(src))
    local dst = dir .. "/dst.qcow2"
    local code, out, err = run(recipe("Change the convert pipeline: convert, verify, then publish"),
      src, dst)
    assert.equal(0, code, out .. err)
    assert.truthy(out:find("verified, 8 MiB virtual in", 1, true), out)
    U.must("qemu-img compare %s %s", U.q(src), U.q(dst))
    local info = U.must("qemu-img check --output=json %s", U.q(dst))
    assert.truthy(info:find('"compressed%-clusters": [1-9]'), info)
    -- No temporary file is left next to it.
    assert.equal("", U.must("ls -A %s | grep vdk- || true", U.q(dir)))
    code, out, err = run(recipe("Change the convert pipeline: convert, verify, then publish"),
      src, dst)
    assert.equal(1, code)
    assert.truthy(err:find("already exists", 1, true), err)
  end)
end)

describe("cookbook: verify a backup", function()
  it("passes a good backup and names what is wrong with a bad one", function()
    local orig, good = dir .. "/orig.qcow2", dir .. "/good.qcow2"
    U.must("qemu-img create -q -f qcow2 %s 4M && qemu-io -c 'write -P 7 64k 128k' %s",
      U.q(orig), U.q(orig))
    U.must("qemu-img convert -O qcow2 %s %s", U.q(orig), U.q(good))
    local code, out = run(recipe("Verify a backup"), orig, good)
    assert.equal(0, code, out)
    assert.truthy(out:find("ok       content: equal", 1, true), out)
    assert.truthy(out:find("ok       metadata: 0 corruptions, 0 leaked clusters", 1, true), out)
    local bad = dir .. "/bad.qcow2"
    U.must("cp %s %s && qemu-io -c 'write -P 9 100k 1' %s", U.q(good), U.q(bad), U.q(bad))
    code, out = run(recipe("Verify a backup"), orig, bad)
    assert.equal(1, code)
    assert.truthy(out:find("PROBLEM  content: content (first difference at byte 102400)", 1,
      true), out)
  end)
end)

describe("cookbook: find out why an image is large", function()
  it("accounts for data, metadata, snapshots and unused space", function()
    local img = dir .. "/large.qcow2"
    U.must("qemu-img create -q -f qcow2 %s 16M && qemu-io -c 'write -P 1 0 4M' %s",
      U.q(img), U.q(img))
    U.must("qemu-img snapshot -c keep %s", U.q(img))
    U.must("qemu-io -c 'write -P 2 0 4M' %s", U.q(img))
    local code, out, err = run(recipe("Find out why an image is large"), img)
    assert.equal(0, code, out .. err)
    assert.truthy(out:find("this layer maps 4 MiB of data", 1, true), out)
    assert.truthy(out:find("metadata: ", 1, true), out)
    assert.truthy(out:find("1 internal snapshots keep old clusters alive", 1, true), out)
    assert.truthy(out:find("of the file is neither mapped data nor metadata (partly the "
      .. "snapshots' clusters)", 1, true), out)
  end)
end)
