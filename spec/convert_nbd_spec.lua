-- spec/convert_nbd_spec.lua: vdk convert with NBD exports (nbdkit on unix
-- sockets) as sources and targets, compare over NBD, and errors injected by
-- nbdkit's error filter: the message names the export, the offset and the
-- cause, the exit status is 1, nothing hangs.
local U = require "support.util"
local X = require "support.copy_util"

local dir = U.tmpdir()
local SRC = X.mixed_raw(dir .. "/src.raw", "8M")
local QSRC = X.mixed_qcow2(dir .. "/src.qcow2", "8M")

local servers = {}

-- Start nbdkit on a new socket; returns the URI.
local function nbdkit(args)
  local i = #servers + 1
  local sock, pid = ("%s/s%d.sock"):format(dir, i), ("%s/s%d.pid"):format(dir, i)
  -- nbdkit forks into the background once the socket is ready; its output
  -- must not hold the pipe open.
  X.sh("nbdkit --log=null -U %s -P %s %s </dev/null >/dev/null 2>&1", U.q(sock), U.q(pid), args)
  for _ = 1, 100 do
    local f = io.open(pid)
    if f then
      servers[i] = f:read("l")
      f:close()
      if servers[i] then break end
    end
    X.sh("sleep 0.05")
  end
  return "nbd+unix:///?socket=" .. sock
end

local function stop_all()
  for _, pid in ipairs(servers) do os.execute("kill " .. pid .. " 2>/dev/null") end
  servers = {}
end

local function has_nbd()
  return U.has_format("nbd") and os.execute("command -v nbdkit >/dev/null 2>&1")
end

describe("vdk convert with NBD", function()
  if not has_nbd() then
    pending("needs the nbd driver and nbdkit")
    return
  end
  teardown(stop_all)

  it("converts a qcow2 image into an export (-n) and the export into qcow2", function()
    local uri = nbdkit("memory 8M")
    local code, out, err = X.vdk("convert", "-q", "-n", QSRC, uri)
    assert.equal(0, code, out .. err)
    X.assert_same(QSRC, uri)
    local back = dir .. "/back.qcow2"
    code, out, err = X.vdk("convert", "-q", "-O", "qcow2", "-m", "16", "-W", uri, back)
    assert.equal(0, code, out .. err)
    X.assert_same(QSRC, back)
    X.assert_clean(back)
    X.assert_holes_kept(QSRC, back, 65536)
  end)

  it("compares over NBD", function()
    local uri = nbdkit("-r file " .. U.q(SRC))
    local code, out = X.vdk("compare", SRC, uri)
    assert.equal(0, code)
    assert.equal("Images are identical.\n", out)
  end)

  it("refuses to create an export", function()
    local uri = nbdkit("memory 8M")
    local code, _, err = X.vdk("convert", SRC, uri)
    assert.equal(1, code)
    assert.truthy(err:find("does not support image creation: use -n", 1, true), err)
  end)

  it("reports a read error of the export with its offset and cause", function()
    local uri = nbdkit("--filter=error file " .. U.q(SRC) .. " error-pread-rate=100% error-pread=EIO")
    local dst = dir .. "/r.qcow2"
    local code, out, err = X.vdk("convert", "-O", "qcow2", uri, dst)
    assert.equal(1, code, out .. err)
    assert.truthy(err:find("^vdk: error while reading 'nbd%+unix:///%?socket=.-' at byte %d+: "), err)
    assert.truthy(err:find("Input/output error", 1, true), err)
    assert.is_nil(io.open(dst))
  end)

  it("reports ENOSPC from the export while writing", function()
    local uri = nbdkit("--filter=error memory 8M error-pwrite-rate=100% error-pwrite=ENOSPC")
    local code, _, err = X.vdk("convert", "-n", SRC, uri)
    assert.equal(1, code)
    assert.truthy(err:find("^vdk: error while writing 'nbd%+unix:///%?socket=.-' at byte %d+: "), err)
    assert.truthy(err:find("No space left on device", 1, true), err)
  end)
end)
