-- vdk.inspect: looking inside images. Loaded by require "vdk"; adds methods
-- to every image (the methods table is shared with the C module):
--
--   img:queries()                  the format's inspection queries
--   img:header()                   decoded header, feature bits with names
--   img:extensions()               header extensions (qcow2)
--   img:snapshot_table()           the internal snapshot table (qcow2)
--   img:l1{snapshot=, first=, count=}   an L1 table's non-empty entries
--   img:l2(l1_index | {guest_offset=}, {snapshot=})   one L2 table, decoded
--   img:refcount(host_offset [, count])   refcount of a host cluster (qcow2)
--   img:refmap(host_offset [, {max=}])    who references a host cluster
--   img:stats()                    qemu-img check's cluster figures
--   img:layout()                   where the metadata lies in the file
--   img:chain()                    the backing chain, top first
--   img:allocation()               bytes by kind, per layer and as seen
--   img:explain(offset)            how a guest offset resolves, layer by
--                                  layer, to the bytes it reads
--   img:hexdump(offset, length [, {host = true}])   guest or host bytes
--
-- The raw material is img:inspect(query, ...) (bindings/linspect.c, driver
-- slot "inspect"); results print well (they carry a __tostring from
-- vdk.inspect_format) and keep every field for scripts. Operational
-- failures return nil, message, code like the rest of the module.
local core = require "vdk.core"
local fmt = require "vdk.inspect_format"

local methods = core.image_methods
local M = {}

-- Give a result its printed form (fmt.render[name]) and return it.
local function typed(t, name)
  if type(t) == "table" then setmetatable(t, fmt.meta(name)) end
  return t
end

local function misuse(level, f, ...) error(f:format(...), level + 1) end

local function opt_table(t, what)
  if t == nil then return {} end
  if type(t) ~= "table" then misuse(3, "%s: options must be a table", what) end
  return t
end

local function int_arg(v, what, name)
  if v == nil then return nil end
  local n = math.tointeger(v)
  if not n or n < 0 then misuse(3, "%s: %s must be a non-negative integer", what, name) end
  return n
end

-- A snapshot given by index (a number, 0-based as in the table), or by ID or
-- name (a string: "1" is the snapshot whose ID is 1) -> index.
local function snapshot_index(img, snap, what)
  if snap == nil then return nil end
  if type(snap) == "number" then
    if math.tointeger(snap) then return math.tointeger(snap) end
    return nil, ("%s: no snapshot %s"):format(what, snap), "ENOENT"
  end
  local t, msg, code = img:inspect("snapshots")
  if not t then return nil, msg, code end
  for _, s in ipairs(t.snapshots) do
    if s.id == tostring(snap) or s.name == tostring(snap) then return s.index end
  end
  return nil, ("%s: no snapshot '%s'"):format(what, tostring(snap)), "ENOENT"
end

local function query(name, render)
  return function(img, ...)
    local t, msg, code = img:inspect(name, ...)
    if not t then return nil, msg, code end
    return typed(t, render or name)
  end
end

methods.header = query("header")
methods.extensions = query("extensions")
methods.snapshot_table = query("snapshots", "snapshot_table")
methods.stats = query("stats")
methods.layout = query("layout")

function methods.queries(img)
  local t, msg, code = img:inspect("queries")
  if not t then return nil, msg, code end
  local names = {}
  for i, q in ipairs(t.queries) do names[i] = q.name end
  return names
end

function methods.l1(img, opts)
  opts = opt_table(opts, "l1")
  local snap, msg, code = snapshot_index(img, opts.snapshot, "l1")
  if msg then return nil, msg, code end
  local first, count = int_arg(opts.first, "l1", "first"), int_arg(opts.count, "l1", "count")
  if img.format == "qed" then return query("l1")(img, first, count) end
  return query("l1")(img, snap or -1, first, count)
end

function methods.l2(img, which, opts)
  opts = opt_table(opts, "l2")
  local index = math.tointeger(which)
  if type(which) == "table" then
    local off = int_arg(which.guest_offset, "l2", "guest_offset")
    if not off then misuse(2, "l2: give an L1 index or {guest_offset = N}") end
    local h, msg, code = img:header()
    if not h then return nil, msg, code end
    index = off // h.l2_coverage
  elseif not index or index < 0 then
    misuse(2, "l2: the L1 index must be a non-negative integer")
  end
  local snap, msg, code = snapshot_index(img, opts.snapshot, "l2")
  if msg then return nil, msg, code end
  if img.format == "qed" then return query("l2")(img, index) end
  return query("l2")(img, index, snap)
end

function methods.refcount(img, offset, count)
  offset = int_arg(offset, "refcount", "host offset") or misuse(2, "refcount: host offset required")
  return query("refcount")(img, offset, int_arg(count, "refcount", "count"))
end

function methods.refmap(img, offset, opts)
  offset = int_arg(offset, "refmap", "host offset") or misuse(2, "refmap: host offset required")
  opts = opt_table(opts, "refmap")
  return query("refmap")(img, offset, int_arg(opts.max, "refmap", "max"))
end

-- ---------------------------------------------------------------- chain

function methods.chain(img)
  local list, layer, depth = {}, img, 0
  while layer do
    list[#list + 1] = {
      depth = depth, filename = layer.filename, format = layer.format, size = layer.size,
      backing_filename = layer.backing_filename, backing_format = layer.backing_format,
      image = layer,
    }
    layer, depth = layer.backing, depth + 1
  end
  if #list > 0 and list[#list].backing_filename then
    list[#list].backing_missing = true -- named but not open
  end
  return typed(list, "chain")
end

-- ---------------------------------------------------------------- allocation

local function kind_of(e)
  if e.compressed then return "compressed" end
  if e.data then return "data" end
  if e.zero and e.present then return "zero" end
  return "unallocated"
end

local function count_extents(iter, add)
  local ok, err = pcall(function() for e in iter do add(e) end end)
  if not ok then return nil, tostring(err) end
  return true
end

-- Bytes by kind: as the guest sees the disk (by the layer that answers) and
-- as each layer allocates on its own.
function methods.allocation(img)
  local result = { size = img.size, seen = { data = 0, zero = 0, unallocated = 0, compressed = 0 },
                   by_depth = {}, layers = {} }
  local ok, msg = count_extents(img:map(), function(e)
    local k = kind_of(e)
    result.seen[k] = result.seen[k] + e.length
    if k ~= "unallocated" then
      local d = result.by_depth[e.depth + 1] or { depth = e.depth, bytes = 0 }
      d.bytes = d.bytes + e.length
      result.by_depth[e.depth + 1] = d
    end
  end)
  if not ok then return nil, msg, "EIO" end
  for i = 1, #result.by_depth do result.by_depth[i] = result.by_depth[i] or { depth = i - 1, bytes = 0 } end
  for _, l in ipairs(methods.chain(img)) do
    local t = { depth = l.depth, filename = l.filename, format = l.format,
                data = 0, zero = 0, unallocated = 0, compressed = 0 }
    ok, msg = count_extents(l.image:map({ top_only = true }), function(e)
      local k = kind_of(e)
      t[k] = t[k] + e.length
    end)
    if not ok then return nil, msg, "EIO" end
    t.file_size = l.image:file_size()
    t.actual_size = l.image:actual_size()
    result.layers[#result.layers + 1] = t
  end
  return typed(result, "allocation")
end

-- ---------------------------------------------------------------- explain

-- One layer's answer for guest offset off: the driver's explain, or the
-- obvious one for formats without inspection (raw: offset = offset).
local function explain_layer(layer, off, snap)
  if snap then return layer:inspect("explain", off, snap) end
  if off >= layer.size then
    return { steps = {}, result = { kind = "past end", reads = ("zeros: the offset lies past the "
      .. "end of this layer (%d bytes)"):format(layer.size) } }
  end
  local t, msg, code = layer:inspect("explain", off)
  if t then return t end
  if code ~= "UNSUPPORTED" then return nil, msg, code end
  local e = layer:block_status(off, 1)
  local host = e and e.offset
  local zero = e and e.zero and not e.data
  local reads = host and ("data at host offset 0x%x of %s"):format(host, layer.filename) or "data"
  if zero then
    reads = host and ("zeros (a hole at host offset 0x%x of %s)"):format(host, layer.filename)
      or "zeros"
  end
  return {
    steps = { { structure = layer.format .. " file", says = host and
      ("guest offset 0x%x is host offset 0x%x"):format(off, host) or "no mapping information" } },
    result = { kind = zero and "zero" or "data", host_offset = host, file = layer.filename,
               reads = reads },
  }
end

-- img:explain(offset [, {snapshot = id or name}]) -> { offset, layers = {...},
-- answer = {...}, bytes }; with a snapshot, through the snapshot's L1 table
-- (then down the backing chain), and bytes are not read.
function methods.explain(img, offset, opts)
  offset = int_arg(offset, "explain", "offset") or misuse(2, "explain: offset required")
  opts = opt_table(opts, "explain")
  local snap, smsg, scode = snapshot_index(img, opts.snapshot, "explain")
  if smsg then return nil, smsg, scode end
  if offset >= img.size and not snap then
    misuse(2, "explain: offset %d lies past the end of the image (%d bytes)", offset, img.size)
  end
  local out = { offset = offset, layers = {}, snapshot = opts.snapshot }
  local layer, depth = img, 0
  while layer do
    local t, msg, code = explain_layer(layer, offset, depth == 0 and snap or nil)
    if not t then return nil, msg, code end
    t.depth, t.filename, t.format = depth, layer.filename, layer.format
    out.layers[#out.layers + 1] = t
    local kind = t.result.kind
    if kind ~= "unallocated" then
      out.answer = { depth = depth, kind = kind, filename = layer.filename, reads = t.result.reads }
      break
    end
    if not layer.backing then
      out.answer = { depth = depth, kind = "unallocated", filename = layer.filename,
                     reads = layer.backing_filename and ("zeros: the backing file %s is not open")
                       :format(layer.backing_filename) or "zeros: no layer defines this offset" }
      break
    end
    layer, depth = layer.backing, depth + 1
  end
  if not snap then
    local bytes = img:read(offset, math.min(16, img.size - offset))
    if bytes then out.bytes = bytes end
  end
  return typed(out, "explain")
end

-- ---------------------------------------------------------------- hexdump

-- img:hexdump(offset, length [, {host = true}]) -> text (guest bytes, or
-- the image file's own bytes with host = true); at most 1 MiB.
function methods.hexdump(img, offset, length, opts)
  offset = int_arg(offset, "hexdump", "offset") or 0
  length = int_arg(length, "hexdump", "length") or 256
  opts = opt_table(opts, "hexdump")
  if length > (1 << 20) then misuse(2, "hexdump: at most 1 MiB at a time") end
  local data, msg, code
  if opts.host then
    data, msg, code = img:read_file(offset, length)
  else
    if offset > img.size then misuse(2, "hexdump: offset past the end of the image") end
    data, msg, code = img:read(offset, math.min(length, img.size - offset))
  end
  if not data then return nil, msg, code end
  return fmt.hexdump(data, offset)
end

M.hexdump = fmt.hexdump
-- img:map_svg(path): scripts/vdk/svg.lua.
require "vdk.svg"
return M
