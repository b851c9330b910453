-- vdk.savevm: the snapshot-saving pipeline, in a form operators can read
-- and change.
--
--   local savevm = require "vdk.savevm"
--   local ok, err = savevm.save(img, "before-upgrade", io.open("state.bin", "rb"),
--                               { progress = function(p) ... end })
--   savevm.export(img, "before-upgrade", io.open("out.bin", "wb"))
--
-- save() takes a VM state stream and turns it into a new snapshot:
--
--   1. a writer (vdk.vmstate_writer, bindings/lsnapshot.c) owns two
--      buffers of buffer_size bytes (8 MiB, a multiple of the cluster size,
--      aligned for O_DIRECT). The stream fills one while a worker thread
--      writes the other to newly allocated, contiguous clusters: large
--      aligned writes, never a read-modify-write, with cache=none as well
--      as writeback;
--   2. progress is reported every `interval` bytes;
--   3. writer:finish() writes the last buffer (zero-padded to a cluster),
--      waits for it and flushes the image: the state is durable;
--   4. only then is the snapshot created (img:snapshot_create with the
--      state's size), which itself switches the image to the new snapshot
--      table in one atomic header write.
-- A crash before step 4 completes leaves no new snapshot (the state's
-- clusters are leaked space, nothing else); after it, a complete one. On
-- any error the staged state is dropped and nil, message, code returned.
--
-- The stream is a file handle (read straight into the writer's buffers), a
-- path, or a function returning the next chunk (a string, nil at the end).
-- opts: buffer_size, naive (the slow path: every chunk written at once
-- where it lands, for comparison), progress (function(p) with p.bytes,
-- p.written, p.elapsed, p.rate), interval (bytes, default 64 MiB), and the
-- snapshot's fields: id, date_sec, date_nsec, vm_clock_nsec, icount.
local vdk = require "vdk.core" -- vmstate_writer, monotonic

local M = {}

M.DEFAULT_INTERVAL = 64 << 20

local clock = vdk.monotonic -- seconds, monotonic

local function report(opts, w, t0)
  if not opts.progress then return end
  local elapsed = clock() - t0
  opts.progress({ bytes = w.bytes, written = w.written, elapsed = elapsed,
                  rate = elapsed > 0 and w.written / elapsed or 0 })
end

-- Feed the stream to the writer; returns true or nil, msg, code.
local function pump(w, source, opts, t0)
  local step = opts.interval or M.DEFAULT_INTERVAL
  if type(source) == "function" then
    local since = 0
    while true do
      local chunk = source()
      if chunk == nil then return true end
      if type(chunk) ~= "string" then error("savevm: the stream must return strings", 3) end
      local n, msg, code = w:write(chunk)
      if not n then return nil, msg, code end
      since = since + #chunk
      if since >= step then since = 0 report(opts, w, t0) end
    end
  end
  while true do
    local n, msg, code = w:write_from(source, step)
    if not n then return nil, msg, code end
    if n == 0 then return true end
    report(opts, w, t0)
  end
end

local SNAPSHOT_FIELDS = { "id", "date_sec", "date_nsec", "vm_clock_nsec", "icount" }

function M.save(img, name, source, opts)
  opts = opts or {}
  local file, close_after = source, false
  if type(source) == "string" then
    local msg
    file, msg = io.open(source, "rb")
    if not file then return nil, msg, "ENOENT" end
    close_after = true
  end
  local t0 = clock()
  local w = vdk.vmstate_writer(img, { buffer_size = opts.buffer_size, naive = opts.naive })
  local fine, ok, msg, code = pcall(pump, w, file, opts, t0)
  if close_after then file:close() end
  if not fine then -- an error raised by the stream: drop the state, raise it again
    w:abort()
    error(ok, 0)
  end
  local size
  if ok then size, msg, code = w:finish() end
  if not size then
    w:abort()
    return nil, msg, code
  end
  report(opts, w, t0)
  local sopts = { vm_state_size = size, icount = -1 } -- QEMU's savevm: no icount
  for _, k in ipairs(SNAPSHOT_FIELDS) do
    if opts[k] ~= nil then sopts[k] = opts[k] end
  end
  ok, msg, code = img:snapshot_create(name, sopts)
  if not ok then
    w:abort()
    return nil, msg, code
  end
  w:abort() -- releases the writer; the state now belongs to the snapshot
  return size
end

-- Copy the VM state of snapshot ref to dest (a file handle, a path, or a
-- function taking each chunk). Returns the size or nil, msg, code.
function M.export(img, ref, dest, opts)
  opts = opts or {}
  local snap
  for _, s in ipairs(assert(img:snapshots())) do
    if (type(ref) == "string" and (s.id == ref or s.name == ref))
        or (type(ref) == "table" and (s.id == ref.id or s.name == ref.name)) then
      snap = snap or s
    end
  end
  if not snap then return nil, ("no snapshot '%s'"):format(tostring(ref.name or ref.id or ref)), "ENOENT" end
  local out, close_after = dest, false
  if type(dest) == "string" then
    local msg
    out, msg = io.open(dest, "wb")
    if not out then return nil, msg, "EIO" end
    close_after = true
  end
  local chunk, pos, t0 = opts.buffer_size or (8 << 20), 0, clock()
  while pos < snap.vm_state_size do
    local n = math.min(chunk, snap.vm_state_size - pos)
    local data, msg, code = img:vmstate_read({ id = snap.id }, pos, n)
    if not data then return nil, msg, code end
    if type(out) == "function" then out(data) else assert(out:write(data)) end
    pos = pos + n
    if opts.progress then
      local el = clock() - t0
      opts.progress({ bytes = pos, written = pos, total = snap.vm_state_size, elapsed = el,
                      rate = el > 0 and pos / el or 0 })
    end
  end
  if close_after then
    local ok, msg = out:close()
    if not ok then return nil, msg, "EIO" end
  end
  return snap.vm_state_size
end

return M
