-- spec/nbd_spec.lua: the NBD protocol driver (formats/nbd/) against real
-- servers: nbdkit (memory plugin and its filters) and qemu-nbd, each on a
-- unix socket in a temporary folder, stopped when the spec ends.
local U = require "support.util"
local vdk = require "vdk"

local dir = U.tmpdir()
local pids = {}
local nservers = 0

-- Wait (bounded) until the file at path is not empty; returns its text.
local function wait_file(path)
  U.run("for i in $(seq 200); do [ -s %s ] && exit 0; sleep 0.05; done", U.q(path))
  return U.read_file(path)
end

local function stop(pid, signal)
  os.execute(("kill -%s %d 2>/dev/null"):format(signal or "TERM", pid))
  os.execute(("kill -CONT %d 2>/dev/null"):format(pid))
  U.run("for i in $(seq 200); do kill -0 %d 2>/dev/null || exit 0; sleep 0.05; done", pid)
end

local function next_socket()
  nservers = nservers + 1
  return ("%s/s%d.sock"):format(dir, nservers), ("%s/s%d.pid"):format(dir, nservers)
end

-- nbdkit in the background (it forks once the socket listens); args are
-- shell words. Returns the URI, the pid and the socket path.
local function nbdkit(args)
  local sock, pidfile = next_socket()
  U.must("nbdkit --log=null -U %s -P %s %s", U.q(sock), U.q(pidfile), args)
  local pid = assert(math.tointeger(tonumber(wait_file(pidfile))))
  pids[#pids + 1] = pid
  return "nbd+unix:///?socket=" .. sock, pid, sock
end

-- qemu-nbd serving file (format fmt) until stopped; extra: more options.
local function qemu_nbd(file, fmt, extra)
  local sock, pidfile = next_socket()
  U.must("qemu-nbd --fork --persistent --pid-file=%s -k %s -f %s %s %s",
    U.q(pidfile), U.q(sock), fmt, extra or "", U.q(file))
  local pid = assert(math.tointeger(tonumber(wait_file(pidfile))))
  pids[#pids + 1] = pid
  return "nbd+unix:///?socket=" .. sock, pid, sock
end

local function open_rw(uri)
  return assert(vdk.open(uri, { readonly = false }))
end

describe("nbd driver", function()
  teardown(function()
    for _, pid in ipairs(pids) do stop(pid, "KILL") end
  end)

  it("is a built-in driver that opens nbd URIs without a host file", function()
    assert.is_true(U.has_format("nbd"))
    local uri = nbdkit("memory 4M")
    local img <close> = assert(vdk.open(uri))
    assert.equal("nbd", img.format)
    assert.equal(uri, img.filename)
    assert.equal(4 * 1024 * 1024, img.size)
    assert.is_true(img.readonly)
    assert.is_nil((img:actual_size()))
  end)

  it("reads, writes, zeroes and discards an nbdkit memory disk", function()
    local uri = nbdkit("memory 64M")
    local img <close> = open_rw(uri)
    local big = U.bytes(65536, 3):rep(33 * 16) .. "tail" -- more than one 32 MiB request
    assert(img:write(12345, big))
    assert(img:write(0, "head"))
    assert.equal("head", img:read(0, 4))
    assert.is_true(img:read(12345, #big) == big)
    assert(img:write_zeroes(1 << 20, 4096))
    assert.equal(("\0"):rep(4096), img:read(1 << 20, 4096))
    assert(img:write_zeroes(2 << 20, 1 << 20, { unmap = true }))
    assert.equal(("\0"):rep(1 << 20), img:read(2 << 20, 1 << 20))
    assert(img:discard(8 << 20, 1 << 20)) -- memory trims to zeros
    assert.equal(("\0"):rep(1 << 20), img:read(8 << 20, 1 << 20))
    assert(img:flush())
    assert.equal(big:sub(1 + (9 << 20) - 12345, (10 << 20) - 12345),
      img:read(9 << 20, 1 << 20))
  end)

  it("writes through qemu-nbd land in the exported file", function()
    local file = dir .. "/q.raw"
    U.must("qemu-img create -q -f raw %s 8M", U.q(file))
    U.must("qemu-io -f raw -c 'write -P 0x5a 0 1M' %s", U.q(file))
    local uri, pid = qemu_nbd(file, "raw")
    local img = open_rw(uri)
    assert.equal(("\x5a"):rep(512), img:read(1000, 512))
    local data = U.bytes(300000, 9)
    assert(img:write(2 * 1024 * 1024 + 1, data))
    assert(img:write_zeroes(0, 4096))
    assert(img:close())
    stop(pid)
    local bytes = U.read_file(file)
    assert.equal(("\0"):rep(4096), bytes:sub(1, 4096))
    assert.equal(("\x5a"):rep(1024 * 1024 - 4096), bytes:sub(4097, 1024 * 1024))
    assert.is_true(bytes:sub(2 * 1024 * 1024 + 2, 2 * 1024 * 1024 + 1 + #data) == data)
  end)

  it("maps and describes an export exactly as qemu-img does", function()
    local file = dir .. "/m.qcow2"
    U.must("qemu-img create -q -f qcow2 %s 16M", U.q(file))
    U.must("qemu-io -f qcow2 -c 'write -P 1 0 64k' -c 'write -z 1M 128k' "
      .. "-c 'write -P 2 4M 1M' -c 'discard 4M 64k' -c 'write -P 3 15M 512' %s", U.q(file))
    local _, _, sock = qemu_nbd(file, "qcow2", "-r")
    -- qemu-img prints the URI in this spelling; given it, vdk prints it too.
    local uri = "nbd+unix://?socket=" .. sock
    for _, args in ipairs({ { "map", "--output=json" }, { "map" }, { "info" },
                            { "info", "--output=json" } }) do
      local code, out, err = U.vdk_cmd(args[1], args[2] or "--output=human", uri)
      assert.equal(0, code, err)
      local want = U.must("qemu-img %s %s %s", args[1], args[2] or "", U.q(uri))
      assert.equal(want, out)
    end
    local code, out = U.vdk_cmd("info", "nbd:unix:" .. sock)
    assert.equal(0, code)
    assert.matches("file format: raw\n", out, 1, true)
    assert.matches("disk size: unavailable\n", out, 1, true)
  end)

  it("reports block status through the Lua API, and sees its own writes", function()
    local uri = nbdkit("memory 8M")
    local img <close> = open_rw(uri)
    local e = assert(img:block_status(0, img.size))
    assert.same({ 0, 8 << 20, true, true, false }, { e.start, e.length, e.present, e.zero, e.data })
    assert(img:write(1 << 20, ("d"):rep(65536)))
    e = assert(img:block_status(0, img.size))
    assert.same({ 0, 1 << 20, true, false }, { e.start, e.length, e.zero, e.data })
    e = assert(img:block_status(1 << 20, img.size - (1 << 20)))
    assert.same({ 1 << 20, 65536, false, true, 1 << 20 },
      { e.start, e.length, e.zero, e.data, e.offset })
  end)

  it("sends WRITE_ZEROES without NO_HOLE only when unmapping is allowed", function()
    local log = dir .. "/zero.log"
    local uri = nbdkit(("--filter=log memory 4M logfile=%s"):format(U.q(log)))
    local img = open_rw(uri)
    assert(img:write_zeroes(0, 65536))
    assert(img:write_zeroes(65536, 65536, { unmap = true }))
    assert(img:close())
    local text = U.read_file(log)
    assert.matches("Zero id=%d+ offset=0x0 count=0x10000 trim=0", text)
    assert.matches("Zero id=%d+ offset=0x10000 count=0x10000 trim=1", text)
  end)

  it("flushes once after writes (writeback), never with cache unsafe", function()
    local log = dir .. "/flush.log"
    local uri = nbdkit(("--filter=log memory 4M logfile=%s"):format(U.q(log)))
    local function flushes()
      local n = 0
      for _ in U.read_file(log):gmatch("%.%.%.Flush id") do n = n + 1 end
      return n
    end
    local img = open_rw(uri)
    assert(img:flush()) -- nothing written yet: nothing to flush
    assert(img:write(0, "data"))
    assert(img:flush())
    assert(img:close()) -- closing flushes, but nothing changed since
    assert.equal(1, flushes())
    img = assert(vdk.open(uri, { readonly = false, cache = "unsafe" }))
    assert(img:write(0, "more"))
    assert(img:flush())
    assert(img:close())
    assert.equal(1, flushes())
  end)

  it("writes zeros when the server cannot zero, and reads everything as data "
    .. "without block status", function()
    local uri = nbdkit("--no-sr --filter=nozero memory 4M")
    local img <close> = open_rw(uri)
    assert(img:write(0, ("z"):rep(200000)))
    assert(img:write_zeroes(100, 150000))
    assert.equal(("z"):rep(100) .. ("\0"):rep(150000) .. ("z"):rep(49900),
      img:read(0, 200000))
    local e = assert(img:block_status(0, img.size))
    assert.same({ 4 << 20, true, false }, { e.length, e.data, e.zero })
  end)

  it("honours a minimum block size and a maximum request size", function()
    local uri = nbdkit("--filter=blocksize-policy memory 4M blocksize-minimum=4096 "
      .. "blocksize-maximum=65536 blocksize-error-policy=error")
    local img <close> = open_rw(uri)
    local data = U.bytes(300001, 5)
    assert(img:write(4097, data))          -- unaligned, larger than the maximum
    assert(img:write(10, "abc"))           -- inside one block
    assert.is_true(img:read(4097, #data) == data)
    assert.equal("\0abc\0", img:read(9, 5))
    assert(img:write_zeroes(4100, 10))
    assert.equal(("\0"):rep(10), img:read(4100, 10))
    assert(img:discard(100, 5000))         -- rounded inwards, no error
  end)

  it("opens a read-only export read-only, and refuses to open it for writing", function()
    local uri = nbdkit("-r memory 4M")
    local img, msg = vdk.open(uri, { readonly = false })
    assert.is_nil(img)
    assert.matches("read-only", msg, 1, true)
    assert.matches(uri, msg, 1, true)
    img = assert(vdk.open(uri))
    local ok, wmsg, code = img:write(0, "x")
    assert.is_nil(ok)
    assert.equal("EROFS", code)
    assert.matches("read-only", wmsg, 1, true)
    assert.equal(("\0"):rep(16), img:read(0, 16))
    img:close()
  end)

  it("accepts qemu's legacy nbd:unix: names with an export name", function()
    local file = dir .. "/x.raw"
    U.must("qemu-img create -q -f raw %s 2M", U.q(file))
    local _, _, sock = qemu_nbd(file, "raw", "-x disk1")
    local img = assert(vdk.open("nbd:unix:" .. sock .. ":exportname=disk1"))
    assert.equal(2 * 1024 * 1024, img.size)
    img:close()
    local none, msg = vdk.open("nbd:unix:" .. sock .. ":exportname=other")
    assert.is_nil(none)
    assert.matches("cannot connect", msg)
    img = assert(vdk.open("nbd+unix:///disk1?socket=" .. sock))
    img:close()
  end)

  it("names the URI, the offset and the server's error", function()
    local uri = nbdkit("--filter=error memory 4M error-pread=EIO error-pread-rate=100% "
      .. "error-pwrite=ENOSPC error-pwrite-rate=100%")
    local img <close> = open_rw(uri)
    local ok, msg, code = img:read(65536, 4096)
    assert.is_nil(ok)
    assert.equal("EIO", code)
    assert.matches(uri, msg, 1, true)
    assert.matches("read of 4096 bytes at offset 65536 failed", msg, 1, true)
    assert.matches("Input/output error", msg, 1, true)
    ok, msg, code = img:write(1 << 20, "x")
    assert.is_nil(ok)
    assert.equal("ENOSPC", code)
    assert.matches("write of 1 bytes at offset 1048576 failed: the server replied: No space "
      .. "left on device", msg, 1, true)
  end)

  it("fails, not hangs, when the server dies in the middle of a read", function()
    local uri, pid = nbdkit("--filter=delay memory 4M delay-read=3")
    local img <close> = assert(vdk.open(uri))
    os.execute(("(sleep 0.3; kill -9 %d) >/dev/null 2>&1 &"):format(pid))
    local ok, msg, code = img:read(8192, 512)
    assert.is_nil(ok)
    assert.equal("EIO", code)
    assert.matches("read of 512 bytes at offset 8192 failed: connection lost", msg, 1, true)
    ok, msg = img:read(0, 512) -- the connection stays dead, quickly
    assert.is_nil(ok)
    assert.matches("connection lost", msg, 1, true)
  end)

  it("gives up on a server that stops answering (VDK_NBD_TIMEOUT)", function()
    local uri, pid = nbdkit("--filter=delay memory 4M delay-read=60")
    local script = dir .. "/read.lua"
    U.write_file(script, [[
      local vdk = require "vdk"
      local img = assert(vdk.open(arg[1]))
      assert(img:read(0, 512))
    ]])
    local code, _, err = U.run3("VDK_NBD_TIMEOUT=1 %s run %s %s", U.q(U.vdk), U.q(script), U.q(uri))
    assert.equal(1, code)
    assert.matches("read of 512 bytes at offset 0 failed: connection lost: no answer from "
      .. "the server for 1 seconds", err, 1, true)
    -- A stopped server: the handshake itself times out.
    stop(pid, "KILL")
    uri, pid = nbdkit("memory 4M")
    os.execute(("kill -STOP %d"):format(pid))
    code, _, err = U.run3("VDK_NBD_TIMEOUT=1 %s info %s", U.q(U.vdk), U.q(uri))
    assert.equal(1, code)
    assert.matches("no answer from the server within 1 seconds while connecting", err, 1, true)
    stop(pid, "KILL")
  end)

  it("works through the delay filter, opening more connections when busy", function()
    local log = dir .. "/delay.log"
    local uri = nbdkit(("--filter=log --filter=delay memory 16M delay-read=2ms "
      .. "delay-write=2ms logfile=%s"):format(U.q(log)))
    local img = open_rw(uri)
    local data = U.bytes(65536, 11):rep(80)
    for off = 0, 15 * 1024 * 1024, #data do
      assert(img:write(off, data:sub(1, math.min(#data, img.size - off))))
    end
    assert(img:flush())
    assert.is_true(img:read(#data, #data) == data)
    assert(img:close())
    -- One caller at a time needs one connection.
    local text = U.read_file(log)
    assert.matches("connection=1 Flush", text, 1, true)
    assert.is_nil(text:find("connection=2 Connect", 1, true))
    -- The copy engine's requests, split to the server's 64 KiB maximum, are
    -- more than one connection serves at once: nbdkit offers multi-conn,
    -- so vdk opens more.
    local busy_log = dir .. "/busy.log"
    uri = nbdkit(("--filter=log --filter=blocksize-policy --filter=delay memory 16M "
      .. "delay-write=2ms blocksize-maximum=65536 logfile=%s"):format(U.q(busy_log)))
    local src = dir .. "/busy.raw"
    U.write_file(src, data:rep(3):sub(1, 16 * 1024 * 1024))
    local code, _, err = U.vdk_cmd("convert", "-n", "-m", "16", "-W", "-S", "0", "-f", "raw",
      src, uri)
    assert.equal(0, code, err)
    text = U.read_file(busy_log)
    assert.matches("connection=2 Connect", text, 1, true)
    U.must("qemu-img compare -f raw -F raw %s %s", U.q(src), U.q(uri))
  end)

  it("reports an unreachable server clearly", function()
    local sock = dir .. "/nothing.sock"
    local img, msg = vdk.open("nbd+unix:///?socket=" .. sock)
    assert.is_nil(img)
    assert.matches("cannot connect", msg, 1, true)
    assert.matches(sock, msg, 1, true)
  end)
end)
