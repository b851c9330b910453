-- spec/fault_check_spec.lua: I/O errors (EIO, ENOSPC) injected at the Nth
-- read, write or flush of an image's file, N swept from 1 until no fault
-- fires, during plain writes, during a copy (convert) and during a repair,
-- for qcow2 and QED (vdk.testing fault rules, bindings/ltesting.c). Each
-- run must end with a clear error (naming the errno), after which the image
-- still opens, `check -r all` leaves it clean, and every byte flushed
-- before the faulty run reads back as it was.
local U = require "support.util"
local vdk = require "vdk"
local testing = require "vdk.testing"
local check = require "vdk.check"

local CS = 4096
local FORMATS = {
  qcow2 = { format = "qcow2", size = "4M", cluster_size = CS, lazy_refcounts = false },
  ["qcow2 lazy"] = { format = "qcow2", size = "4M", cluster_size = CS, lazy_refcounts = true },
  qed = { format = "qed", size = "4M", cluster_size = CS, table_size = 1 },
}
local ERRNOS = { EIO = "Input/output error", ENOSPC = "No space left on device" }

local function flushed_data() return U.bytes(3 * CS + 100, 7) end

-- An image with flushed data at 0 and at 1M.
local function prepare(path, opts)
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  local img = assert(vdk.create(path, o))
  assert(img:write(0, flushed_data()))
  assert(img:write(1 << 20, flushed_data()))
  assert(img:close())
end

local function intact(path)
  local img = assert(vdk.open(path))
  local d = flushed_data()
  assert.are.equal(d, img:read(0, #d))
  assert.are.equal(d, img:read(1 << 20, #d))
  img:close()
end

-- The image opens for writing, check -r all leaves it clean, the flushed
-- bytes are intact.
local function recovers(path, verify)
  local img = assert(vdk.open(path, { readonly = false }))
  assert(img:close())
  img = assert(check.open(path, { repair = true }))
  local _, second = assert(check.repair(img, "all"))
  assert(img:close())
  assert.are.equal(0, second.corruptions)
  assert.are.equal(0, second.leaks)
  img = assert(check.open(path))
  local r = assert(check.run(img))
  img:close()
  assert.are.equal(0, check.exit_code(r), check.problems_text(r))
  verify(path, false)
end

-- A workload that allocates, overwrites, zeroes, discards and flushes.
local function workload(img)
  local ok, msg = true, nil
  local function step(r, m)
    if ok and not r then ok, msg = false, m end
  end
  step(img:write((3 << 19) + 17, U.bytes(2 * CS, 3)))
  step(img:write(2 << 20, U.bytes(5 * CS, 4)))
  step(img:flush())
  step(img:write_zeroes(3 << 20, 2 * CS))
  step(img:discard(1 << 21, CS))
  step(img:write((3 << 20) + CS, U.bytes(CS, 5)))
  step(img:flush())
  return ok, msg
end

-- Sweep N for one op and errno; run(path) returns ok, message.
local function sweep(dir, name, opts, op, errno, run, setup, verify)
  verify = verify or intact
  local path = dir .. "/" .. name:gsub(" ", "-") .. "-" .. op .. "-" .. errno
  local fired = 0
  for n = 1, 400 do
    if setup then setup(path) else prepare(path, opts) end
    local rule = testing.fault({ path = path, op = op, nth = n, errno = errno })
    local ok, msg = run(path)
    rule:remove()
    testing.clear()
    if ok then
      assert.is_true(fired > 0 or op == "read", "no fault fired for " .. op)
      verify(path, true)
      return fired
    end
    fired = fired + 1
    assert.truthy(tostring(msg):find(ERRNOS[errno], 1, true) or tostring(msg):find(errno, 1, true),
      ("%s nth %d: unclear error: %s"):format(op, n, tostring(msg)))
    recovers(path, verify)
  end
  error("the fault still fires after 400 operations")
end

local function writes(path)
  local img, msg = vdk.open(path, { readonly = false })
  if not img then return false, msg end
  local ok, err = workload(img)
  local closed, cmsg = img:close()
  if ok and not closed then return false, cmsg end
  return ok, err
end

describe("faults during writes", function()
  local dir = U.tmpdir()
  for name, opts in pairs(FORMATS) do
    for _, op in ipairs({ "write", "flush", "read" }) do
      for errno in pairs(op == "read" and { EIO = true } or ERRNOS) do
        it(("%s: %s at the Nth %s"):format(name, errno, op), function()
          sweep(dir, name, opts, op, errno, writes)
        end)
      end
    end
  end
end)

describe("faults during a copy (convert)", function()
  local dir = U.tmpdir()
  local src = dir .. "/src.raw"
  local s = assert(vdk.create(src, { size = "4M" }))
  assert(s:write(0, U.bytes(64 * 1024, 11)))
  assert(s:write(3 << 20, U.bytes(64 * 1024, 12)))
  assert(s:close())
  for name, opts in pairs(FORMATS) do
    for _, op in ipairs({ "write", "flush" }) do
      it(("%s target: EIO and ENOSPC at the Nth %s"):format(name, op), function()
        for errno in pairs(ERRNOS) do
          sweep(dir, name, opts, op, errno, function(path)
            local dst, msg = vdk.open(path, { readonly = false })
            if not dst then return false, msg end
            local from = assert(vdk.open(src))
            local job, jmsg = vdk.copy({ source = from, target = dst })
            local ok, err = true, nil
            if not job then ok, err = false, jmsg else ok, err = job:wait() end
            from:close()
            local closed, cmsg = dst:close()
            if ok and not closed then return false, cmsg end
            return ok, err
          end, function(path)
            prepare(path, opts)
          end, function(path, done)
            if done then -- a completed copy: the target reads as the source
              local a, b = assert(vdk.open(src)), assert(vdk.open(path))
              assert.is_true(a:read(0, 4 << 20) == b:read(0, 4 << 20))
              a:close()
              b:close()
            end
          end)
        end
      end)
    end
  end
end)

describe("faults during a repair", function()
  local dir = U.tmpdir()
  -- An image left by a crash: written, never closed (dirty, need-check or
  -- leaked clusters), made by a child process.
  local function crashed(path, opts)
    prepare(path, opts)
    local script = dir .. "/crash.lua"
    U.write_file(script, ([[
local vdk = require "vdk"
local img = assert(vdk.open(%q, { readonly = false }))
for i = 0, 30 do assert(img:write((2 << 20) + i * 9000, string.rep("x", 5000))) end
assert(img:flush())
for i = 0, 30 do assert(img:write((3 << 20) + i * 7000, string.rep("y", 3000))) end
os.exit(0, false)
]]):format(path))
    local code, out, err = U.vdk_cmd("run", script)
    assert(code == 0, out .. err)
    if opts.format == "qcow2" then -- and a refcount of 2 on a cluster used once
      local s = U.read_file(path)
      local l1, rt = string.unpack(">I8", s, 41), string.unpack(">I8", s, 49)
      local l2 = string.unpack(">I8", s, l1 + 1) & 0x00fffffffffffe00
      local data = string.unpack(">I8", s, l2 + 1) & 0x00fffffffffffe00
      local rb = string.unpack(">I8", s, rt + 1)
      local f = assert(io.open(path, "r+b"))
      f:seek("set", rb + 2 * (data // CS))
      f:write(string.pack(">I2", 2))
      f:close()
    end
  end
  for name, opts in pairs(FORMATS) do
    for _, op in ipairs({ "write", "flush", "read" }) do
      it(("%s: EIO and ENOSPC at the Nth %s of check -r all"):format(name, op), function()
        for errno in pairs(op == "read" and { EIO = true } or ERRNOS) do
          sweep(dir, name, opts, op, errno, function(path)
            local img, msg = check.open(path, { repair = true })
            if not img then return false, msg end
            local first, second = check.repair(img, "all")
            local closed, cmsg = img:close()
            if not first then return false, second end
            if not closed then return false, cmsg end
            return true
          end, function(path) crashed(path, opts) end)
        end
      end)
    end
  end
end)
