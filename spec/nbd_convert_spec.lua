-- spec/nbd_convert_spec.lua: `vdk convert` (and compare) with NBD sources
-- and targets, served by nbdkit and qemu-nbd on unix sockets in a temporary
-- folder; results checked with qemu-img compare, check and map.
local U = require "support.util"
local X = require "support.copy_util"

local dir = U.tmpdir()
local pids = {}
local nservers = 0

local function wait_file(path)
  U.run("for i in $(seq 200); do [ -s %s ] && exit 0; sleep 0.05; done", U.q(path))
  return U.read_file(path)
end

local function stop(pid, signal)
  os.execute(("kill -%s %d 2>/dev/null"):format(signal or "TERM", pid))
  U.run("for i in $(seq 200); do kill -0 %d 2>/dev/null || exit 0; sleep 0.05; done", pid)
end

local function next_socket()
  nservers = nservers + 1
  return ("%s/s%d.sock"):format(dir, nservers), ("%s/s%d.pid"):format(dir, nservers)
end

-- nbdkit in the background; returns the URI and the pid.
local function nbdkit(args)
  local sock, pidfile = next_socket()
  U.must("nbdkit --log=null -U %s -P %s %s", U.q(sock), U.q(pidfile), args)
  local pid = assert(math.tointeger(tonumber(wait_file(pidfile))))
  pids[#pids + 1] = pid
  return "nbd+unix:///?socket=" .. sock, pid
end

-- qemu-nbd serving file in format fmt; returns the URI and the pid.
local function qemu_nbd(file, fmt, extra)
  local sock, pidfile = next_socket()
  U.must("qemu-nbd --fork --persistent --pid-file=%s -k %s -f %s %s %s",
    U.q(pidfile), U.q(sock), fmt, extra or "", U.q(file))
  local pid = assert(math.tointeger(tonumber(wait_file(pidfile))))
  pids[#pids + 1] = pid
  return "nbd+unix:///?socket=" .. sock, pid
end

local function convert(...)
  local code, out, err = X.vdk("convert", ...)
  assert.equal(0, code, err)
  return out
end

describe("vdk convert with NBD", function()
  teardown(function()
    for _, pid in ipairs(pids) do stop(pid, "KILL") end
  end)

  it("copies a raw file into an nbdkit memory export (-n), keeping holes", function()
    local src = X.mixed_raw(dir .. "/a.raw", "8M")
    local uri = nbdkit("memory 8M")
    convert("-n", "-f", "raw", src, uri)
    X.assert_same(src, uri)
    X.assert_holes_kept(src, uri, 65536)
    local code = X.vdk("compare", "-f", "raw", "-F", "raw", src, uri)
    assert.equal(0, code)
  end)

  it("copies a qcow2 file into a qcow2 image served by qemu-nbd", function()
    local src = X.mixed_qcow2(dir .. "/b.qcow2", "8M")
    local dst = dir .. "/b-dst.qcow2"
    U.must("qemu-img create -q -f qcow2 %s 8M", U.q(dst))
    local uri, pid = qemu_nbd(dst, "qcow2")
    convert("-n", "-m", "16", "-W", src, uri)
    X.assert_same(src, uri)
    stop(pid)
    X.assert_same(src, dst)
    X.assert_clean(dst)
    X.assert_holes_kept(src, dst, 65536)
  end)

  it("copies an NBD export (qemu-nbd, qcow2 inside) into a new qcow2 file", function()
    local src = X.mixed_qcow2(dir .. "/c.qcow2", "8M")
    local uri = qemu_nbd(src, "qcow2", "-r")
    local dst = dir .. "/c-out.qcow2"
    convert("-O", "qcow2", uri, dst)
    X.assert_same(src, dst)
    X.assert_clean(dst)
    X.assert_holes_kept(src, dst, 65536)
  end)

  it("copies between two NBD exports through the delay filter, out of order", function()
    local src = X.mixed_raw(dir .. "/d.raw", "16M")
    local from = nbdkit(("-r --filter=delay file %s delay-read=2ms delay-extents=2ms")
      :format(U.q(src)))
    local to = nbdkit("--filter=delay memory 16M delay-write=2ms delay-zero=2ms")
    convert("-n", "-m", "16", "-W", from, to)
    X.assert_same(src, to)
    local raw = dir .. "/d-out.raw"
    convert("-O", "raw", from, raw)
    assert.is_true(U.read_file(raw) == U.read_file(src))
  end)

  it("fails with the URI, the offset and the cause when the source fails", function()
    local src = X.mixed_raw(dir .. "/e.raw", "4M")
    local uri = nbdkit(("-r --filter=error file %s error-pread=EIO error-pread-rate=100%%")
      :format(U.q(src)))
    local dst = dir .. "/e-out.qcow2"
    local code, _, err = X.vdk("convert", "-O", "qcow2", uri, dst)
    assert.equal(1, code)
    assert.matches(uri, err, 1, true)
    assert.matches("read of %d+ bytes at offset %d+ failed: the server replied: "
      .. "Input/output error", err)
    assert.is_nil(io.open(dst, "rb")) -- nothing left behind
  end)

  it("fails with the cause when the NBD target is full", function()
    local src = X.mixed_raw(dir .. "/f.raw", "4M")
    local uri = nbdkit("--filter=error memory 4M error=ENOSPC error-pwrite-rate=100% "
      .. "error-zero-rate=100%")
    local code, _, err = X.vdk("convert", "-n", src, uri)
    assert.equal(1, code)
    assert.matches(uri, err, 1, true)
    assert.matches("at offset %d+ failed: the server replied: No space left on device", err)
  end)

  it("fails, not hangs, when the source server dies mid-copy", function()
    local src = X.mixed_raw(dir .. "/g.raw", "8M")
    local uri, pid = nbdkit(("-r --filter=delay file %s delay-read=2"):format(U.q(src)))
    os.execute(("(sleep 0.5; kill -9 %d) >/dev/null 2>&1 &"):format(pid))
    local code, _, err = X.vdk("convert", "-O", "raw", uri, dir .. "/g-out.raw")
    assert.equal(1, code)
    assert.matches("connection lost", err, 1, true)
    assert.is_nil(io.open(dir .. "/g-out.raw", "rb"))
  end)
end)
