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
-- the same offset of the same file of the chain. Block status does not say
-- where a compressed cluster is stored, so compressed ranges of the image
-- itself are compared cluster by cluster through their L2 entries (the
-- inspection query img:l2): the same compressed entry is the same data.
-- Data is written uncompressed unless -c asks for compression.
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

-- Read [first, stop) of view in chunks of chunk bytes and hand each to
-- write(offset, data).
local function transfer(view, first, stop, chunk, write, stats)
  for at = first, stop - 1, chunk do
    local n = math.min(chunk, stop - at)
    local data, msg, code = view:read(at, n)
    if not data then return nil, msg, code end
    local ok
    ok, msg, code = write(at, data)
    if not ok then return nil, msg, code end
    stats.bytes_read = stats.bytes_read + n
  end
  return true
end

-- Copy [pos, pos+len) of view into target. With compression (-c) the data
-- goes out as whole compressed target clusters: the range is widened to
-- cluster boundaries and the widened part written with the view's data
-- too, which is what the target must hold there in the end (where the
-- views agree, the target already holds it).
local function copy_range(view, target, pos, len, zero, stats, compress)
  if zero then
    local ok, msg, code = target:write_zeroes(pos, len, { unmap = true })
    stats.bytes_zeroed = stats.bytes_zeroed + len
    return ok, msg, code
  end
  local ok, msg, code
  if compress then
    local cs = target.cluster_size
    local first = pos // cs * cs
    local stop = math.min((pos + len + cs - 1) // cs * cs, view.size)
    ok, msg, code = transfer(view, first, stop, math.max(cs, CHUNK // cs * cs),
                             function(at, data) return target:write_compressed(at, data) end,
                             stats)
  else
    ok, msg, code = transfer(view, pos, pos + len, CHUNK,
                             function(at, data) return target:write(at, data) end, stats)
  end
  if ok then stats.bytes_written = stats.bytes_written + len end
  return ok, msg, code
end

-- The raw L2 entries of the image's compressed clusters, as seen through
-- the snapshot ref (nil: the current disk), by guest cluster; one L2 table
-- read per call and kept in cache. A table that cannot be read answers
-- nothing, so its clusters are copied.
local function compressed_entries(base, ref, cache, gc)
  local per = base.cluster_size // 8
  local l1i = gc // per
  local key = tostring(ref) .. ":" .. l1i
  local t = cache[key]
  if not t then
    t = {}
    local l2 = base:l2(l1i, ref and { snapshot = ref } or nil)
    for _, e in ipairs(l2 and l2.entries or {}) do
      if e.kind == "compressed" then t[l1i * per + e.index] = e.raw end
    end
    cache[key] = t
  end
  return t[gc]
end

-- Within a range both prev and view store compressed in the image itself,
-- copy only the clusters whose compressed entries differ.
local function copy_compressed_diff(d, pos, n, stats)
  local cs = d.base.cluster_size
  local stop = pos + n
  while pos < stop do
    local gc = pos // cs
    local len = math.min(stop, (gc + 1) * cs) - pos
    local a = compressed_entries(d.base, d.prev_ref, d.cache, gc)
    local b = compressed_entries(d.base, d.view_ref, d.cache, gc)
    if a and a == b then
      stats.bytes_shared = stats.bytes_shared + len
    else
      local ok, msg, code = copy_range(d.view, d.target, pos, len, false, stats, d.compress)
      if not ok then return nil, msg, code end
    end
    pos = pos + len
  end
  return true
end

-- Make target's disk read like view, where prev (the view target holds
-- now) maps differently. d: {prev, view, target, base, prev_ref, view_ref,
-- cache} (refs: snapshot IDs, nil for the current disk).
local function copy_diff(d, stats)
  local prev, view, target = d.prev, d.view, d.target
  local pos, size = 0, view.size
  while pos < size do
    local a, msg, code = status(prev, pos, math.min(STEP, size - pos))
    if not a then return nil, msg, code end
    local b
    b, msg, code = status(view, pos, math.min(STEP, size - pos))
    if not b then return nil, msg, code end
    local n = math.min(a.length, b.length)
    if same(a, b) then
      stats.bytes_shared = stats.bytes_shared + n
    elseif a.compressed and b.compressed and a.depth == 0 and b.depth == 0
      and d.base.cluster_size > 0 then
      local ok
      ok, msg, code = copy_compressed_diff(d, pos, n, stats)
      if not ok then return nil, msg, code end
    else
      local ok
      ok, msg, code = copy_range(view, target, pos, n, b.zero, stats, d.compress)
      if not ok then return nil, msg, code end
    end
    pos = pos + n
    stats.done = stats.done + n
  end
  return true
end

local function full_copy(view, target, stats, show, compress)
  local job, msg, code = vdk.copy{ source = view, target = target, fresh_target = true,
                                   compress = compress, on_progress = show }
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

-- Copy source (its path and open options) into target with every snapshot;
-- compress: write the data compressed (convert -c). Returns ok, message,
-- progress (as a copy job's, for the summary).
function M.run(name, open_opts, target, show, compress)
  compress = compress or false
  local t0 = vdk.monotonic()
  local stats = { bytes_read = 0, bytes_written = 0, bytes_zeroed = 0, bytes_skipped = 0,
                  bytes_shared = 0, -- left as the previous snapshot had it
                  done = 0, total = 0, interrupted = false }
  local base, msg, code = vdk.open(name, open_opts)
  if not base then return nil, msg, stats end
  local list
  list, msg = base:snapshots()
  local prev, prev_ref, ok = nil, nil, list ~= nil
  local l2_cache = {}
  for i = 1, #(list or {}) + 1 do
    if not ok then break end
    local s = list[i]
    local view = s and view_of(name, open_opts, s) or base
    if not view then ok, msg = false, ("snapshot '%s': cannot open it"):format(s.name) break end
    stats.total = stats.total + view.size
    ok, msg, code = resize(target, view.size)
    if ok then
      if prev then
        ok, msg, code = copy_diff({ prev = prev, view = view, target = target, base = base,
                                    prev_ref = prev_ref, view_ref = s and s.id,
                                    cache = l2_cache, compress = compress }, stats)
      else ok, msg, code = full_copy(view, target, stats, show, compress) end
    end
    if ok and s then
      ok, msg, code = take(base, s, target)
      if not ok then msg = ("snapshot '%s': %s"):format(s.name, msg) end
    end
    if prev and prev ~= base then prev:close() end
    prev, prev_ref = view, s and s.id
  end
  if prev and prev ~= base then prev:close() end
  base:close()
  stats.elapsed = vdk.monotonic() - t0
  return ok, msg, stats
end

return M
