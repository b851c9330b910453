-- vdk: the Lua module. `local vdk = require "vdk"`.
--
-- The C module vdk.core (bindings/lvdk.c) provides vdk.open, the image
-- object and its data methods. This file adds what reads better in Lua:
--   vdk.create(path, opts)      create an image and open it read-write
--   img:info(opts)              qemu-img info's fields, as a table
--   img:map(opts)               iterator over merged extents, as qemu-img map
--   vdk.parse_size(s)           "1.5G" -> 1610612736
--   vdk.size_to_str(n)          1610612736 -> "1.5 GiB"
-- docs/lua-api.md describes every function, with examples.
local core = require "vdk.core"
local size = require "vdk.size"

-- The module starts as a copy of vdk.core's functions (open, drivers ...).
local vdk = {}
for name, value in pairs(core) do vdk[name] = value end
vdk.image_methods = nil
-- The image methods table is shared with the C module: methods added to it
-- here are methods of every image.
local methods = core.image_methods

vdk.parse_size = size.parse
vdk.size_to_str = size.human

-- ---------------------------------------------------------------- argument checks

-- Raise a misuse error blamed on the caller of the API function: level 2
-- when called from the API function itself, 3 from a helper it calls.
local function misuse(level, fmt, ...)
  error(fmt:format(...), level + 1)
end

local function check_table(t, what, known)
  if t == nil then return {} end
  if type(t) ~= "table" then misuse(3, "%s: options must be a table, got %s", what, type(t)) end
  if known then
    for k in pairs(t) do
      if not known[k] then misuse(3, "%s: unknown option '%s'", what, tostring(k)) end
    end
  end
  return t
end

-- A non-negative integer option value, or nil when absent.
local function uint_option(t, key, what)
  local v = t[key]
  if v == nil then return nil end
  local n = math.tointeger(v)
  if not n then misuse(3, "%s: option '%s' must be an integer, got %s", what, key, tostring(v)) end
  if n < 0 then misuse(3, "%s: option '%s' must not be negative", what, key) end
  return n
end

-- ---------------------------------------------------------------- vdk.create

local CACHE_MODES = { writeback = true, writethrough = true, none = true,
                      directsync = true, unsafe = true }
-- Keys of vdk.create's opts that are not format options.
local CREATE_OWN_KEYS = { format = true, size = true, cache = true, open = true }

-- A creation option's value as qemu-img -o spells it.
local function option_string(key, v)
  if type(v) == "boolean" then return v and "on" or "off" end
  if type(v) == "string" then return v end
  local n = math.tointeger(v)
  if n then return ("%d"):format(n) end
  misuse(3, "create: option '%s' must be a string, boolean or integer, got %s", key, tostring(v))
end

-- vdk.create(path, opts) -> image (read-write) | nil, msg, code.
-- opts: format ("raw"), size (integer or "10G"; optional with backing_file),
-- cache (of the returned image), open (false: return true, do not open), and
-- the format's creation options under qemu-img's names.
function vdk.create(path, opts)
  if type(path) ~= "string" then misuse(2, "create: path must be a string, got %s", type(path)) end
  opts = check_table(opts, "create")
  local format = opts.format or "raw"
  if type(format) ~= "string" then misuse(2, "create: option 'format' must be a string") end
  if opts.cache ~= nil and not CACHE_MODES[opts.cache] then
    misuse(2, "create: unknown cache mode '%s'", tostring(opts.cache))
  end
  local bytes
  if opts.size ~= nil then
    local msg
    bytes, msg = size.parse(opts.size)
    if not bytes then misuse(2, "create: %s", msg) end
  end
  local kv = {}
  for key, v in pairs(opts) do
    if type(key) ~= "string" then misuse(2, "create: option names must be strings") end
    if not CREATE_OWN_KEYS[key] then kv[key] = option_string(key, v) end
  end
  local ok, msg, code = core.create(path, format, bytes, kv)
  if not ok then return nil, msg, code end
  if opts.open == false then return true end
  return vdk.open(path, { format = format, readonly = false, cache = opts.cache })
end

-- ---------------------------------------------------------------- img:info

-- Protocol drivers (no host file) whose contents qemu-img shows as raw,
-- without a dirty flag: `qemu-img info nbd://...` says "file format: raw".
local PROTOCOL_SHOWN_AS = { nbd = "raw" }

-- The fields of one layer, named as in `qemu-img info --output=json`.
local function layer_info(img)
  local fi, msg, code = img:format_info()
  if not fi then return nil, msg, code end
  local shown = PROTOCOL_SHOWN_AS[img.format]
  local t = {
    ["virtual-size"] = img.size,
    filename = img.filename,
    format = shown or img.format,
    ["dirty-flag"] = fi.dirty,
  }
  if shown then t["dirty-flag"] = nil end
  if img.cluster_size > 0 then t["cluster-size"] = img.cluster_size end
  -- qemu-img leaves actual-size out when the file cannot be measured.
  t["actual-size"] = img:actual_size()
  if #fi.items > 0 then
    local data = {}
    for _, item in ipairs(fi.items) do data[item[1]] = item[2] end
    t["format-specific"] = { type = img.format, data = data }
  end
  if img.backing_filename then
    t["backing-filename"] = img.backing_filename
    t["full-backing-filename"] = img.full_backing_filename
    t["backing-filename-format"] = img.backing_format
  end
  return t
end

-- img:info([{backing_chain = true}]) -> table | list of tables | nil, msg, code
function methods.info(img, opts)
  opts = check_table(opts, "info", { backing_chain = true })
  if not opts.backing_chain then return layer_info(img) end
  local list = {}
  local layer = img
  while layer do
    local t, msg, code = layer_info(layer)
    if not t then return nil, msg, code end
    list[#list + 1] = t
    layer = layer.backing
  end
  return list
end

-- ---------------------------------------------------------------- img:map

-- Whether extent b continues extent a in qemu-img map's sense: same status,
-- same layer and file, and (when mapped) contiguous in the file.
local function mergeable(a, b)
  if a.zero ~= b.zero or a.data ~= b.data or a.depth ~= b.depth
      or a.present ~= b.present or a.compressed ~= b.compressed
      or a.filename ~= b.filename or (a.offset == nil) ~= (b.offset == nil) then
    return false
  end
  return a.offset == nil or a.offset + a.length == b.offset
end

-- Largest range asked of block_status at once (as qemu-img map does).
local STEP = 1 << 30

-- img:map([{start =, length =, top_only =}]) -> iterator over extents.
-- A failure while iterating raises an error with the core's message.
function methods.map(img, opts)
  opts = check_table(opts, "map", { start = true, length = true, top_only = true })
  local pos = uint_option(opts, "start", "map") or 0
  local stop = img.size
  local length = uint_option(opts, "length", "map")
  if length and length < stop - pos then stop = pos + length end
  local query = { top_only = opts.top_only and true or false }
  local pending -- the extent being merged, not yet returned
  return function()
    while pos < stop do
      local e, msg = img:block_status(pos, math.min(stop - pos, STEP), query)
      if not e then error(msg, 0) end
      pos = pos + e.length
      if pending and mergeable(pending, e) then
        pending.length = pending.length + e.length
      else
        local done = pending
        pending = e
        if done then return done end
      end
    end
    local done = pending
    pending = nil
    return done
  end
end

-- Inspection (img:header(), img:explain(offset), ...) lives in
-- scripts/vdk/inspect.lua and img:map_svg in scripts/vdk/svg.lua. They load
-- on first use, so commands that never inspect start faster: each method
-- here is a stand-in that loads the module (which replaces the stand-ins
-- with the real methods) and calls the real one.
local LAZY_METHODS = {
  "header", "extensions", "snapshot_table", "stats", "layout", "queries", "l1", "l2",
  "refcount", "refmap", "chain", "allocation", "explain", "hexdump", "map_svg",
}
local image_methods = core.image_methods
for _, name in ipairs(LAZY_METHODS) do
  image_methods[name] = function(...)
    require "vdk.inspect"
    local real = image_methods[name]
    return real(...)
  end
end
setmetatable(vdk, { __index = function(t, k)
  if k == "hexdump" then
    t.hexdump = require("vdk.inspect").hexdump
  elseif k == "pretty" then
    t.pretty = require("vdk.inspect_format").pretty
  end
  return rawget(t, k)
end })

return vdk
