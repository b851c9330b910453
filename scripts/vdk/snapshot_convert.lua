-- vdk.snapshot_convert: `vdk convert --keep-snapshots`, a copy of an image
-- with all its internal snapshots and their VM states (qemu-img converts
-- one view at a time), sharing unchanged clusters between the snapshots of
-- the target as they are shared in the source.
--
-- The snapshots are replayed oldest first (table order):
--   1. the target's disk becomes snapshot 1's view (a copy job), and
--      snapshot 1 is created in the target with the same ID, name, dates,
--      clocks and VM state (streamed through vdk.savevm);
--   2. for each next snapshot, only the ranges whose mapping differs from
--      the previous snapshot's in the source (another host cluster, or
--      zeros against data) are written, then the snapshot is created: the
--      clusters both share in the source stay shared in the target;
--   3. last, the same for the source's current disk.
-- Two ranges count as the same when both read as zeros, or both are data at
-- the same offset of the same file of the chain. Compressed clusters are
-- copied again (their sharing is not visible through block status).
local vdk = require "vdk"
local savevm = require "vdk.savevm"

local M = {}

local STEP = 1 << 30
local CHUNK = 4 << 20

local function same(a, b)
  if a.zero and b.zero then return true end
  return a.data and b.data and not a.compressed and not b.compressed and a.offset ~= nil
    and a.offset == b.offset and a.depth == b.depth and a.filename == b.filename
end

-- Status of img at pos (past its end: zeros), at most len bytes.
local function status(img, pos, len)
  if pos >= img.size then return { zero = true, length = len } end
  return img:block_status(pos, math.min(len, img.size - pos))
end

-- Copy [pos, pos+len) of view into target.
local function copy_range(view, target, pos, len, zero, stats)
  if zero then
    local ok, msg, code = target:write_zeroes(pos, len, { unmap = true })
    stats.bytes_zeroed = stats.bytes_zeroed + len
    return ok, msg, code
  end
  local stop = pos + len
  while pos < stop do
    local n = math.min(CHUNK, stop - pos)
    local data, msg, code = view:read(pos, n)
    if not data then return nil, msg, code end
    local ok
    ok, msg, code = target:write(pos, data)
    if not ok then return nil, msg, code end
    stats.bytes_read = stats.bytes_read + n
    stats.bytes_written = stats.bytes_written + n
    pos = pos + n
  end
  return true
end

-- Make target's disk read like view, where prev (the view target holds
-- now) maps differently.
local function copy_diff(prev, view, target, stats)
  local pos, size = 0, view.size
  while pos < size do
    local a, msg, code = status(prev, pos, math.min(STEP, size - pos))
    if not a then return nil, msg, code end
    local b
    b, msg, code = status(view, pos, math.min(STEP, size - pos))
    if not b then return nil, msg, code end
    local n = math.min(a.length, b.length)
    if same(a, b) then
      stats.bytes_skipped = stats.bytes_skipped + n
    else
      local ok
      ok, msg, code = copy_range(view, target, pos, n, b.zero, stats)
      if not ok then return nil, msg, code end
    end
    pos = pos + n
    stats.done = stats.done + n
  end
  return true
end

local function full_copy(view, target, stats, show)
  local job, msg, code = vdk.copy{ source = view, target = target, fresh_target = true,
                                   on_progress = show }
  if not job then return nil, msg, code end
  local ok
  ok, msg, code = job:wait()
  local p = job:progress()
  for _, k in ipairs({ "bytes_read", "bytes_written", "bytes_zeroed", "bytes_skipped", "done" }) do
    stats[k] = stats[k] + (p[k] or 0)
  end
  return ok, msg, code
end

local function resize(target, size)
  if target.size == size then return true end
  return target:resize(size, { shrink = true })
end

-- The snapshot s of the source (its VM state too) becomes one of target.
local function take(source, s, target)
  local fields = { id = s.id, date_sec = s.date_sec, date_nsec = s.date_nsec,
                   vm_clock_nsec = s.vm_clock_nsec, icount = s.icount or -1 }
  if s.vm_state_size == 0 then return target:snapshot_create(s.name, fields) end
  local pos = 0
  local function chunks()
    if pos >= s.vm_state_size then return nil end
    local n = math.min(8 << 20, s.vm_state_size - pos)
    local data = assert(source:vmstate_read({ id = s.id }, pos, n))
    pos = pos + n
    return data
  end
  return savevm.save(target, s.name, chunks, fields)
end

-- Open the source once more, showing snapshot s (nil: the current disk).
local function view_of(name, open_opts, s)
  local img, msg, code = vdk.open(name, open_opts)
  if not img or not s then return img, msg, code end
  local ok
  ok, msg, code = img:snapshot_load({ id = s.id })
  if not ok then
    img:close()
    return nil, msg, code
  end
  return img
end

-- Copy source (its path and open options) into target with every snapshot.
-- Returns ok, message, progress (as a copy job's, for the summary).
function M.run(name, open_opts, target, show)
  local t0 = vdk.monotonic()
  local stats = { bytes_read = 0, bytes_written = 0, bytes_zeroed = 0, bytes_skipped = 0,
                  done = 0, total = 0, interrupted = false }
  local base, msg, code = vdk.open(name, open_opts)
  if not base then return nil, msg, stats end
  local list
  list, msg = base:snapshots()
  local prev, ok = nil, list ~= nil
  for i = 1, #(list or {}) + 1 do
    if not ok then break end
    local s = list[i]
    local view = s and view_of(name, open_opts, s) or base
    if not view then ok, msg = false, ("snapshot '%s': cannot open it"):format(s.name) break end
    stats.total = stats.total + view.size
    ok, msg, code = resize(target, view.size)
    if ok then
      if prev then ok, msg, code = copy_diff(prev, view, target, stats)
      else ok, msg, code = full_copy(view, target, stats, show) end
    end
    if ok and s then
      ok, msg, code = take(base, s, target)
      if not ok then msg = ("snapshot '%s': %s"):format(s.name, msg) end
    end
    if prev and prev ~= base then prev:close() end
    prev = view
  end
  if prev and prev ~= base then prev:close() end
  base:close()
  stats.elapsed = vdk.monotonic() - t0
  return ok, msg, stats
end

return M
