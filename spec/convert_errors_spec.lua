-- spec/convert_errors_spec.lua: read errors, write errors, ENOSPC and flush
-- errors in the middle of a convert (fault files from vdk.testing), and
-- Ctrl-C. Each must end with one message naming the image, the offset and
-- the cause, exit status 1 (130 for Ctrl-C), no hang, and no temporary or
-- half-written target left behind.
local U = require "support.util"
local X = require "support.copy_util"

local dir = U.tmpdir()
local SRC = X.mixed_raw(dir .. "/src.raw", "8M")
local QSRC = X.mixed_qcow2(dir .. "/src.qcow2", "8M")
local DATA = dir .. "/data.raw" -- 16 MiB of random data
X.sh("dd if=/dev/urandom of=%s bs=1M count=16 status=none", U.q(DATA))

-- Run `vdk convert ARGS` in one process with a fault rule installed first:
-- rule = {contains, op, nth, errno, persistent, open} (open: which matching
-- open of the file to wrap; a new target is opened twice, to create it and
-- to write it).
local SCRIPT = [[
local testing = require "vdk.testing"
local rule = testing.fault{ contains = arg[1], op = arg[2], nth = tonumber(arg[3]),
                            errno = arg[4], persistent = arg[5] == "persistent",
                            open = tonumber(arg[6]) }
local args = { [0] = "vdk" }
for i = 7, #arg do args[#args + 1] = arg[i] end
local status = require("vdk.cli").main(args)
local _, wrapped = rule:opens()
io.stderr:write(("wrapped=%d\n"):format(wrapped))
os.exit(status, true)
]]

local function convert_with_fault(rule, ...)
  return X.vdk_script(dir, SCRIPT, rule[1], rule[2], tostring(rule[3]), rule[4] or "EIO",
                      rule[5] and "persistent" or "once", tostring(rule[6] or 1), "convert", ...)
end

local function no_leftovers(target)
  for _, name in ipairs(X.listdir(dir)) do
    assert.is_nil(name:find("%.vdk%-"), "temporary file left: " .. name)
  end
  if target then assert.is_false(X.exists(target), target .. " was created") end
end

X.exists = function(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

describe("vdk convert errors", function()
  it("a read error names the source, the offset and the cause", function()
    local dst = dir .. "/r1.qcow2"
    local code, out, err = convert_with_fault({ "src.raw", "read", 2, "EIO" }, "-O", "qcow2",
                                              SRC, dst)
    assert.equal(1, code, out .. err)
    assert.equal("", out)
    assert.truthy(err:find("^vdk: error while reading '" .. SRC:gsub("%p", "%%%0")
                           .. "' at byte %d+: .*Input/output error\nwrapped=1\n$"), err)
    no_leftovers(dst)
  end)

  it("a persistent read error with many requests in flight does not hang", function()
    local dst = dir .. "/r2.raw"
    local code, _, err = convert_with_fault({ "data.raw", "read", 3, "EIO", true },
                                            "-m", "16", "-W", DATA, dst)
    assert.equal(1, code)
    assert.truthy(err:find("error while reading '.-data.raw' at byte %d+:"), err)
    no_leftovers(dst)
  end)

  it("a metadata read error of a qcow2 source names the image", function()
    local dst = dir .. "/r3.raw"
    local code, _, err = convert_with_fault({ "src.qcow2", "read", 4, "EIO", true }, QSRC, dst)
    assert.equal(1, code)
    assert.truthy(err:find("src.qcow2", 1, true) and err:find("Input/output error", 1, true), err)
    no_leftovers(dst)
  end)

  for _, fmt in ipairs({ "raw", "qcow2" }) do
    it("ENOSPC while writing a new " .. fmt .. " target", function()
      local dst = dir .. "/w." .. fmt
      local code, out, err = convert_with_fault({ "w." .. fmt, "write", 3, "ENOSPC", true, 2 },
                                                "-O", fmt, DATA, dst)
      assert.equal(1, code, out .. err)
      assert.truthy(err:find("^vdk: error while writing '" .. dst:gsub("%p", "%%%0")
                             .. "' at byte %d+: .*No space left on device\n"), err)
      no_leftovers(dst)
    end)
  end

  it("a write error into an existing target (-n) leaves it in place", function()
    local dst = dir .. "/existing.qcow2"
    X.sh("qemu-img create -q -f qcow2 %s 16M", U.q(dst))
    local code, _, err = convert_with_fault({ "existing.qcow2", "write", 3, "EIO" }, "-n",
                                            DATA, dst)
    assert.equal(1, code)
    assert.truthy(err:find("error while writing '" .. dst:gsub("%p", "%%%0") .. "' at byte"), err)
    assert.is_true(X.exists(dst))
    no_leftovers()
  end)

  it("a failed final flush is an error", function()
    local dst = dir .. "/f.raw"
    local code, _, err = convert_with_fault({ "f.raw", "flush", 1, "EIO", false, 2 }, SRC, dst)
    assert.equal(1, code)
    assert.truthy(err:find("error while flushing '" .. dst:gsub("%p", "%%%0") .. "'"), err)
    no_leftovers(dst)
  end)

  it("flushes the new target once at the end of the copy, once more on close", function()
    local dst = dir .. "/once.raw"
    local code, _, err = convert_with_fault({ "once.raw", "flush", 3, "EIO", false, 2 }, SRC, dst)
    assert.equal(0, code, err)
    X.assert_same(SRC, dst)
  end)
end)

describe("vdk convert interrupted", function()
  it("stops within a second on Ctrl-C, exits 130 and leaves nothing", function()
    local dst = dir .. "/int.raw"
    local cmd = ([[
%s convert -q -r 1M %s %s 2>%s &
pid=$!
sleep 1
t0=$(date +%%s%%N)
kill -INT $pid
wait $pid
rc=$?
t1=$(date +%%s%%N)
echo "$rc $(( (t1 - t0) / 1000000 ))"
]]):format(U.q(U.vdk), U.q(DATA), U.q(dst), U.q(dir .. "/int.err"))
    local ok, out = U.run("bash -c %s", U.q(cmd))
    assert.is_true(ok, out)
    local rc, ms = out:match("(%d+) (%d+)")
    assert.equal("130", rc, out .. U.read_file(dir .. "/int.err"))
    assert.truthy(tonumber(ms) < 1000, "took " .. ms .. " ms to stop")
    local err = U.read_file(dir .. "/int.err")
    assert.truthy(err:find("^vdk: interrupted after .- of 16 MiB: '.-int.raw' was not created\n$"), err)
    no_leftovers(dst)
  end)
end)
