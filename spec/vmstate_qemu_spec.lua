-- spec/vmstate_qemu_spec.lua: VM states between vdk and QEMU itself.
--   * a state QEMU's savevm wrote (qemu-system-x86_64, TCG, 16 MiB of RAM,
--     no guest, paused) is read by vdk and starts with QEMU's migration
--     stream magic "QEVM";
--   * it survives `vdk convert --keep-snapshots`, and QEMU's loadvm of the
--     copy succeeds;
--   * a state vdk imports into a snapshot (vdk snapshot -c --vmstate-in,
--     with cache=none and writeback) loads in QEMU; a damaged one fails to
--     load (so loadvm really reads what vdk stored);
--   * the pipeline in Lua: savevm.save from chunks, a file and a path,
--     naive and buffered, read back identically.
-- The QEMU cases are pending when qemu-system-x86_64 is not installed.
local U = require "support.util"
local vdk = require "vdk"
local savevm = require "vdk.savevm"

local QEMU = "qemu-system-x86_64"
local HAVE_QEMU = U.run("command -v %s", QEMU)

-- Run QEMU on img with HMP commands on stdin; returns its output.
local function hmp(img, commands)
  local cmd = ("printf %s | timeout 120 %s -machine pc -m 16 -nodefaults -display none "
    .. "-accel tcg -S -monitor stdio -drive file=%s,if=none,id=d0,format=qcow2 "
    .. "-device virtio-blk-pci,drive=d0"):format(U.q(table.concat(commands, "\n") .. "\nquit\n"),
                                                 QEMU, U.q(img))
  local _, out = U.run(cmd)
  return out
end

local function has_error(out)
  return out:find("Error", 1, true) or out:find("error", 1, true)
end

local function vdk_ok(...)
  local code, out, err = U.vdk_cmd(...)
  assert.equal(0, code, err)
  return out
end

local function check_clean(path)
  local out = U.must("qemu-img check -f qcow2 %s", U.q(path))
  assert.truthy(out:find("No errors were found", 1, true), out)
  assert.falsy(out:find("leak", 1, true), out)
end

describe("VM states with QEMU", function()
  local dir, img, state
  setup(function()
    if not HAVE_QEMU then return end
    dir = U.tmpdir()
    img = dir .. "/vm.qcow2"
    U.must("qemu-img create -q -f qcow2 %s 64M", U.q(img))
    U.must("qemu-io -c 'write -P 9 0 1M' %s", U.q(img))
    local out = hmp(img, { "savevm fromqemu" })
    assert.falsy(has_error(out), out)
    state = dir .. "/state.bin"
  end)

  local function need_qemu()
    if not HAVE_QEMU then pending(QEMU .. " is not installed (package qemu-system-x86)") end
    return HAVE_QEMU
  end

  it("reads a state QEMU's savevm wrote", function()
    if not need_qemu() then return end
    local list = assert(vdk.open(img)):snapshots()
    assert.equal(1, #list)
    assert.equal("fromqemu", list[1].name)
    assert.truthy(list[1].vm_state_size > 100000)
    assert.is_nil(list[1].icount) -- QEMU records none (-1)
    vdk_ok("snapshot", "--vmstate-out", state, "-s", "fromqemu", img)
    local data = U.read_file(state)
    assert.equal(list[1].vm_state_size, #data)
    assert.equal("QEVM", data:sub(1, 4))
    assert.equal(U.must("qemu-img snapshot -l %s", U.q(img)), vdk_ok("snapshot", "-l", img))
  end)

  it("keeps it through convert --keep-snapshots; QEMU loads the copy", function()
    if not need_qemu() then return end
    local copy = dir .. "/copy.qcow2"
    vdk_ok("convert", "-q", "--keep-snapshots", "-O", "qcow2", img, copy)
    check_clean(copy)
    vdk_ok("snapshot", "--vmstate-out", dir .. "/copy.bin", "-s", "fromqemu", copy)
    assert.is_true(U.read_file(state) == U.read_file(dir .. "/copy.bin"))
    local out = hmp(copy, { "loadvm fromqemu", "info status" })
    assert.falsy(has_error(out), out)
    assert.truthy(out:find("VM status: paused", 1, true), out)
  end)

  for _, cache in ipairs({ "writeback", "none" }) do
    it("loads a state vdk imported (cache=" .. cache .. ")", function()
      if not need_qemu() then return end
      local fresh = dir .. "/import-" .. cache .. ".qcow2"
      U.must("qemu-img create -q -f qcow2 %s 64M", U.q(fresh))
      vdk_ok("snapshot", "-t", cache, "-c", "imported", "--vmstate-in", state, fresh)
      check_clean(fresh)
      local out = hmp(fresh, { "loadvm imported" })
      assert.falsy(has_error(out), out)
    end)
  end

  it("fails to load a damaged state (loadvm reads what vdk stored)", function()
    if not need_qemu() then return end
    local data = U.read_file(state)
    local bad = dir .. "/bad.bin"
    U.write_file(bad, data:sub(1, 1000) .. U.bytes(#data - 1000, 7))
    local fresh = dir .. "/bad.qcow2"
    U.must("qemu-img create -q -f qcow2 %s 64M", U.q(fresh))
    vdk_ok("snapshot", "-c", "bad", "--vmstate-in", bad, fresh)
    local out = hmp(fresh, { "loadvm bad" })
    assert.truthy(has_error(out), out)
  end)
end)

describe("the snapshot-saving pipeline", function()
  it("stores chunks, files and paths, buffered and naive, and reads them back", function()
    local dir = U.tmpdir()
    local data = U.bytes(3 * 65536 + 777, 3)
    local src = dir .. "/in.bin"
    U.write_file(src, data)
    local path = dir .. "/p.qcow2"
    local img = assert(vdk.create(path, { format = "qcow2", size = "16M" }))
    local i = 0
    local function chunks()
      i = i + 1
      local piece = data:sub((i - 1) * 5000 + 1, i * 5000)
      return piece ~= "" and piece or nil
    end
    local seen = 0
    assert.equal(#data, savevm.save(img, "chunks", chunks, {
      buffer_size = 65536, interval = 20000, progress = function(p) seen = seen + 1 end }))
    assert.truthy(seen > 0)
    local f = assert(io.open(src, "rb"))
    assert.equal(#data, savevm.save(img, "file", f, { buffer_size = 65536 * 2 }))
    f:close()
    assert.equal(#data, savevm.save(img, "path", src, { naive = true, vm_clock_nsec = 5e9 // 1 }))
    for _, name in ipairs({ "chunks", "file", "path" }) do
      assert.is_true(data == assert(img:vmstate_read(name, 0, #data)), name)
    end
    local list = assert(img:snapshots())
    assert.equal(5000000000, list[3].vm_clock_nsec)
    -- a failing stream leaves no snapshot and no staged state
    assert.has_error(function()
      savevm.save(img, "broken", function() return 42 end)
    end)
    img:vmstate_discard()
    assert.equal(3, #img:snapshots())
    local ok, msg, code = savevm.save(img, "chunks", src)
    assert.is_nil(ok)
    assert.equal("EEXIST", code, msg)
    assert.is_true(img:close())
    check_clean(path)
  end)
end)
