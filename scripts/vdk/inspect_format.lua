-- vdk.inspect_format: how inspection results and other values print.
--
--   fmt.pretty(value [, opts])   any Lua value as readable text: nested
--                                tables indented, offsets in hex, sizes in
--                                human units ("65536 (64 KiB)")
--   fmt.scalar(v, key)           one value, formatted by what its key means
--   fmt.hexdump(data, base)      bytes as "offset  hex  |ascii|" lines
--   fmt.meta(name)               the metatable that gives a result of
--                                vdk.inspect its printed form (fmt.render)
--
-- Keys tell what a number is: names ending in "offset", "raw", "bitmap",
-- "entry", "magic", "features" print in hex; names ending in "size",
-- "length", "coverage", "bytes" (and byte counts of allocation summaries)
-- print in bytes with a human unit; counts (l1_size, table_size ...) stay
-- decimal.
local size = require "vdk.size"

local fmt = {}

local HEX_SUFFIXES = { "offset", "raw", "bitmap", "entry", "magic", "features", "feature_bits" }
local SIZE_SUFFIXES = { "size", "length", "coverage", "bytes" }
-- Names that end like sizes but count entries or clusters.
local COUNTS = {
  l1_size = true, table_size = true, header_size = true, backing_file_size = true,
  extra_data_size = true, entry_size = true, nb_snapshots = true,
  backing_filename_size = true, count = true, index = true,
}
-- Keys of allocation summaries whose numbers are bytes.
local BYTE_KEYS = { data = true, zero = true, unallocated = true, compressed = true,
                    file_size = true, actual_size = true }

local function ends_with(s, suffix) return s:sub(-#suffix) == suffix end

function fmt.kind_of_key(key)
  if type(key) ~= "string" or COUNTS[key] then return "plain" end
  for _, s in ipairs(HEX_SUFFIXES) do if ends_with(key, s) then return "hex" end end
  for _, s in ipairs(SIZE_SUFFIXES) do if ends_with(key, s) then return "size" end end
  if BYTE_KEYS[key] then return "size" end
  return "plain"
end

-- "65536 (64 KiB)"; small numbers stay bare.
function fmt.bytes(n)
  if n < 1024 then return tostring(n) end
  return ("%d (%s)"):format(n, size.human(n))
end

function fmt.hex(n) return ("0x%x"):format(n) end

function fmt.scalar(v, key)
  local t = type(v)
  if t == "string" then return ("%q"):format(v):gsub("\\\n", "\\n") end
  if math.type(v) == "integer" then
    local kind = fmt.kind_of_key(key)
    if kind == "hex" then return fmt.hex(v) end
    if kind == "size" and v >= 0 then return fmt.bytes(v) end
    return tostring(v)
  end
  if t == "table" or t == "userdata" then
    local mt = getmetatable(v)
    if type(mt) == "table" and mt.__tostring then return tostring(v) end
  end
  return tostring(v)
end

-- ---------------------------------------------------------------- pretty

local function is_array(t)
  local n = #t
  for k in pairs(t) do
    if math.type(k) ~= "integer" or k < 1 or k > n then return false end
  end
  return true
end

local function key_order(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then return ta == "number" end
  if ta == "number" or ta == "string" then return a < b end
  return tostring(a) < tostring(b)
end

local function key_text(k)
  if type(k) == "string" and k:match("^[%a_][%w_]*$") then return k end
  return "[" .. fmt.scalar(k) .. "]"
end

local pretty

-- A table on one line, or nil when it holds tables or is too long.
local function inline(t, limit)
  local parts = {}
  if is_array(t) then
    for i = 1, #t do
      if type(t[i]) == "table" and not (getmetatable(t[i]) or {}).__tostring then return nil end
      parts[i] = fmt.scalar(t[i])
    end
  else
    local keys = {}
    for k in pairs(t) do keys[#keys + 1] = k end
    table.sort(keys, key_order)
    for _, k in ipairs(keys) do
      local v = t[k]
      if type(v) == "table" and not (getmetatable(v) or {}).__tostring then return nil end
      parts[#parts + 1] = key_text(k) .. " = " .. fmt.scalar(v, k)
    end
  end
  local s = "{ " .. table.concat(parts, ", ") .. " }"
  if #parts == 0 then s = "{}" end
  if #s > limit then return nil end
  return s
end

function pretty(v, key, indent, depth, opts, seen)
  if type(v) ~= "table" then return fmt.scalar(v, key) end
  local mt = getmetatable(v)
  if type(mt) == "table" and mt.__tostring and not opts.raw then return tostring(v) end
  if seen[v] then return "<cycle>" end
  if depth >= opts.depth then return "{...}" end
  local one = inline(v, opts.width - #indent)
  if one then return one end
  seen[v] = true
  local inner = indent .. "  "
  local lines = { "{" }
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, key_order)
  local array = is_array(v)
  for i, k in ipairs(keys) do
    if i > opts.items then
      lines[#lines + 1] = ("%s-- %d more"):format(inner, #keys - opts.items)
      break
    end
    local prefix = array and "" or key_text(k) .. " = "
    lines[#lines + 1] = inner .. prefix .. pretty(v[k], array and key or k, inner, depth + 1,
      opts, seen) .. ","
  end
  seen[v] = nil
  lines[#lines + 1] = indent .. "}"
  return table.concat(lines, "\n")
end

-- fmt.pretty(v [, {depth = 6, items = 200, width = 100, raw = false}])
function fmt.pretty(v, opts)
  opts = opts or {}
  local o = { depth = opts.depth or 6, items = opts.items or 200, width = opts.width or 100,
              raw = opts.raw }
  return pretty(v, opts.key, "", 0, o, {})
end

-- ---------------------------------------------------------------- hexdump

function fmt.hexdump(data, base)
  base = base or 0
  local lines = {}
  for i = 1, #data, 16 do
    local chunk = data:sub(i, i + 15)
    local hex = chunk:gsub(".", function(c) return ("%02x "):format(c:byte()) end)
    if #chunk > 8 then hex = hex:sub(1, 24) .. " " .. hex:sub(25) end
    local ascii = chunk:gsub("[^\32-\126]", ".")
    lines[#lines + 1] = ("%08x  %-49s |%s|"):format(base + i - 1, hex, ascii)
  end
  return table.concat(lines, "\n")
end

-- ---------------------------------------------------------------- renderers

fmt.render = {}
local render = fmt.render

local function row(k, v) return ("  %-26s %s"):format(k, v) end

local HEADER_ORDER = {
  "magic", "version", "cluster_bits", "cluster_size", "table_size", "header_size", "size",
  "image_size", "crypt_method", "l1_size", "l1_table_offset", "refcount_table_offset",
  "refcount_table_clusters", "refcount_order", "refcount_bits", "nb_snapshots",
  "snapshots_offset", "incompatible_features", "compatible_features", "autoclear_features",
  "feature_bits", "compat_features", "header_length", "compression_type", "extended_l2",
  "l2_entries", "table_entries", "l2_coverage", "backing_file_offset", "backing_file_size",
  "backing_filename_offset", "backing_filename_size", "backing_file", "backing_format",
  "data_file", "file_size",
}

function render.header(t)
  local out, done = { "header:" }, {}
  for _, k in ipairs(HEADER_ORDER) do
    if t[k] ~= nil and type(t[k]) ~= "table" then
      out[#out + 1] = row(k, fmt.scalar(t[k], k))
      done[k] = true
    end
  end
  for k, v in pairs(t) do
    if not done[k] and type(v) ~= "table" then out[#out + 1] = row(k, fmt.scalar(v, k)) end
  end
  local features = type(t.features) == "table" and t.features or {}
  out[#out + 1] = #features > 0 and "feature bits set:" or "feature bits set: none"
  for _, f in ipairs(features) do
    out[#out + 1] = ("  %-12s bit %-2d %s%s"):format(f.type, f.bit, f.name,
      f.known == false and "  (unknown to vdk)" or "")
  end
  if t.feature_table then
    out[#out + 1] = ("feature name table: %d entries"):format(#t.feature_table)
  end
  return table.concat(out, "\n")
end

function render.l2(t)
  if not t.allocated then
    return ("L1[%d]: no L2 table (guest 0x%x..0x%x unallocated)"):format(t.l1_index,
      t.guest_offset, t.guest_offset + t.guest_length)
  end
  local out = { ("L2 table at 0x%x (L1[%d], guest 0x%x..0x%x)%s"):format(t.offset, t.l1_index,
    t.guest_offset, t.guest_offset + t.guest_length, t.owner and (", " .. t.owner) or "") }
  local c = t.counts or {}
  out[#out + 1] = ("entries: %d data, %d zero, %d compressed, %d unallocated%s"):format(
    c.data or 0, c.zero or 0, c.compressed or 0, c.unallocated or 0,
    (c.invalid or 0) > 0 and (", %d invalid"):format(c.invalid) or "")
  out[#out + 1] = ("  %-6s %-14s %-18s %-12s %s"):format("index", "guest", "raw", "kind", "where")
  for _, e in ipairs(t.entries or {}) do
    local where = e.error or ""
    if e.host_offset then where = ("host 0x%x"):format(e.host_offset) end
    if e.compressed_offset then
      where = ("host 0x%x, %d bytes max"):format(e.compressed_offset, e.compressed_size)
    end
    if e.subclusters then where = where .. " [" .. e.subclusters.map .. "]" end
    if e.copied then where = where .. " copied" end
    out[#out + 1] = ("  %-6d 0x%-12x 0x%016x %-12s %s"):format(e.index, e.guest_offset, e.raw,
      e.kind or "?", where)
  end
  return table.concat(out, "\n")
end

function render.explain(t)
  local out = { ("guest offset 0x%x (%d)%s:"):format(t.offset, t.offset,
    t.snapshot and (" in snapshot " .. tostring(t.snapshot)) or "") }
  for _, l in ipairs(t.layers) do
    out[#out + 1] = ("layer %d: %s (%s)"):format(l.depth, l.filename, l.format)
    for i, s in ipairs(l.steps or {}) do
      local says = s.says
      if not says then
        says = ("entry 0x%016x: %s"):format(s.raw or 0, s.kind or "?")
        if s.host_offset then says = says .. (" at host 0x%x"):format(s.host_offset) end
        if s.compressed_offset then
          says = says .. (" at host 0x%x (%d bytes max)"):format(s.compressed_offset,
            s.compressed_size)
        end
        if s.subclusters then says = says .. " [" .. s.subclusters.map .. "]" end
      end
      local where = s.entry_offset and ("[%d] at 0x%x"):format(s.index, s.entry_offset) or ""
      out[#out + 1] = ("  %d. %s%s: %s"):format(i, s.structure or "?",
        where ~= "" and (" " .. where) or "", says)
    end
    out[#out + 1] = "  => " .. (l.result.reads or l.result.kind)
  end
  if t.answer then
    out[#out + 1] = ("answer: %s, from layer %d (%s)"):format(t.answer.kind, t.answer.depth,
      t.answer.filename)
  end
  if t.bytes then out[#out + 1] = "reads: " .. fmt.hexdump(t.bytes, t.offset) end
  return table.concat(out, "\n")
end

function render.chain(t)
  local out = {}
  for _, l in ipairs(t) do
    out[#out + 1] = ("%d: %s (%s, %s)"):format(l.depth, l.filename, l.format, size.human(l.size))
  end
  if #t > 0 and t[#t].backing_missing then
    out[#out + 1] = ("   backing file %s is not open"):format(t[#t].backing_filename)
  end
  return table.concat(out, "\n")
end

local function pct(part, whole)
  if whole == 0 then return "0%" end
  return ("%.1f%%"):format(100 * part / whole)
end

function render.allocation(t)
  local out = { ("virtual size %s"):format(size.human(t.size)), "as the guest sees it:" }
  for _, k in ipairs({ "data", "compressed", "zero", "unallocated" }) do
    out[#out + 1] = ("  %-12s %12s  %6s"):format(k, size.human(t.seen[k]), pct(t.seen[k], t.size))
  end
  for _, d in ipairs(t.by_depth) do
    out[#out + 1] = ("  from layer %d %12s"):format(d.depth, size.human(d.bytes))
  end
  out[#out + 1] = "each layer on its own:"
  out[#out + 1] = ("  %-5s %-10s %-10s %-10s %-10s %-10s %s"):format("layer", "data",
    "compressed", "zero", "unalloc", "file", "name")
  for _, l in ipairs(t.layers) do
    out[#out + 1] = ("  %-5d %-10s %-10s %-10s %-10s %-10s %s"):format(l.depth,
      size.human(l.data), size.human(l.compressed), size.human(l.zero),
      size.human(l.unallocated), l.actual_size and size.human(l.actual_size) or "?", l.filename)
  end
  return table.concat(out, "\n")
end

function render.stats(t)
  local s = ("%d/%d = %.2f%% allocated, %.2f%% fragmented, %.2f%% compressed clusters\n"
    .. "Image end offset: %d"):format(t.allocated_clusters, t.total_clusters,
    t.total_clusters > 0 and 100 * t.allocated_clusters / t.total_clusters or 0,
    t.allocated_clusters > 0 and 100 * t.fragmented_clusters / t.allocated_clusters or 0,
    t.allocated_clusters > 0 and 100 * t.compressed_clusters / t.allocated_clusters or 0,
    t.image_end_offset)
  return s
end

function render.refmap(t)
  local out = { ("host cluster 0x%x: %d reference(s)"):format(t.cluster_offset, t.count) }
  for _, r in ipairs(t.references) do
    out[#out + 1] = ("  %-18s at 0x%x%s%s%s"):format(r.what, r.offset,
      r.owner and (" (" .. r.owner .. ")") or "",
      r.guest_offset and (" guest 0x%x"):format(r.guest_offset) or "",
      r.counted == false and " (shared L2 table)" or "")
  end
  if t.refcount then
    out[#out + 1] = ("  refcount %d, references justify %d%s"):format(t.refcount,
      t.expected_refcount, t.refcount ~= t.expected_refcount and "  <-- MISMATCH" or "")
  end
  return table.concat(out, "\n")
end

-- The metatable of results of kind name.
local metas = {}
function fmt.meta(name)
  local m = metas[name]
  if not m then
    local r = render[name]
    m = { __name = "vdk." .. name, __tostring = function(t)
      if r then return r(t) end
      return fmt.pretty(t, { raw = true })
    end }
    metas[name] = m
  end
  return m
end

return fmt
