-- vdk.convert: the reusable pieces of `vdk convert`, `vdk compare` and
-- `vdk measure` (scripts/vdk/commands/*.lua read top to bottom; the detail
-- lives here).
--
--   local C = require "vdk.convert"
--   local values = C.target_options("qcow2", { "cluster_size=64k" })
--   local srcs, msg = C.open_sources({ "a.raw" }, { cache = "writeback" })
--   local img, tmp = C.create_target("out.qcow2", "qcow2", size, values, "writeback")
--   local show = C.progress_display{ bar = true, fd = 3 }
--   ... vdk.copy{ ..., on_progress = show } ... C.commit_target(img, tmp, "out.qcow2")
--
-- A new target is written under a temporary name in its own folder
-- (".NAME.vdk-XXXXXX") and renamed to its name only once the copy has
-- succeeded and been flushed, so a failed, interrupted or killed convert
-- never leaves a half-written image under the name asked for, and never
-- touches an existing file (an existing target needs -n).
local vdk = require "vdk"
local json = require "vdk.json"
local create_options = require "vdk.create_options"

local M = {}

M.CACHE_MODES = { writeback = true, writethrough = true, none = true,
                  directsync = true, unsafe = true }

-- Exit status of an interrupted command (128 + SIGINT), as a shell reports it.
M.EXIT_INTERRUPTED = 130

local human = vdk.size_to_str

-- ---------------------------------------------------------------- options

-- The -o lists as a table of name -> value (sizes normalized to bytes);
-- "help" for -o help; or nil, message.
function M.target_options(format, lists)
  local values = {}
  for _, text in ipairs(lists or {}) do
    for _, pair in ipairs(create_options.parse(text)) do
      local name, value = pair[1], pair[2]
      if name == "help" or name == "?" then return "help" end
      local def = create_options.find(format, name)
      if def and (def.type == "size" or def.type == "num") then
        local n = vdk.parse_size(value)
        if not n then
          return nil, ("Parameter '%s' expects a %s"):format(name,
            def.type == "size" and "size (suffixes k, M, G, T, P, E)" or "number")
        end
        value = ("%d"):format(n)
      end
      values[name] = value
    end
  end
  return values
end

-- Whether format is one vdk knows.
function M.known_format(format)
  for _, name in ipairs(vdk.drivers()) do
    if name == format then return true end
  end
  return false
end

-- ---------------------------------------------------------------- images

-- Open every source read-only; returns the list or nil, message (and closes
-- what was opened).
function M.open_sources(names, opts)
  local list = {}
  for _, name in ipairs(names) do
    local img, msg = vdk.open(name, { format = opts.format, cache = opts.cache,
                                      force_share = opts.force_share or false })
    if not img then
      M.close_all(list)
      return nil, ("Could not open '%s': %s"):format(name, msg)
    end
    list[#list + 1] = img
  end
  return list
end

function M.close_all(list)
  for _, img in ipairs(list or {}) do img:close() end
end

function M.total_size(list)
  local total = 0
  for _, img in ipairs(list) do total = total + img.size end
  return total
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  -- io.open fails on unreadable files too: ask the shell-free way.
  return os.rename(path, path) ~= nil
end
M.exists = exists

-- A fresh temporary name next to path.
local function temp_name(path)
  local dir, base = path:match("^(.*/)([^/]*)$")
  dir, base = dir or "", base or path
  math.randomseed(os.time(), math.floor(os.clock() * 1e6))
  for _ = 1, 100 do
    local name = ("%s.%s.vdk-%06x"):format(dir, base, math.random(0, 0xffffff))
    if not exists(name) then return name end
  end
  return nil
end

-- Whether name is a protocol URI (an NBD export) rather than a file.
function M.is_protocol(name)
  return name:match("^%a[%w+.-]*://") ~= nil or name:match("^nbd:") ~= nil
end

-- Create the target under a temporary name and open it read-write.
-- Returns image, temporary path; or nil, message.
function M.create_target(path, format, size, values, cache)
  if M.is_protocol(path) then
    return nil, ("Protocol driver '%s' does not support image creation: use -n to write "
                 .. "into '%s'"):format(path:match("^%a+"), path)
  end
  if exists(path) then
    return nil, ("'%s' already exists; use -n to convert into it, or remove it first"):format(path)
  end
  local tmp = temp_name(path)
  if not tmp then return nil, ("%s: cannot find a temporary name"):format(path) end
  local args = { format = format, size = size, cache = cache }
  for k, v in pairs(values) do args[k] = v end
  local img, msg = vdk.create(tmp, args)
  if not img then
    os.remove(tmp)
    return nil, M.replace_plain(msg, tmp, path)
  end
  return img, tmp
end

-- s with every plain occurrence of from replaced by to.
function M.replace_plain(s, from, to)
  local out, i = {}, 1
  while true do
    local a, b = s:find(from, i, true)
    if not a then break end
    out[#out + 1] = s:sub(i, a - 1) .. to
    i = b + 1
  end
  out[#out + 1] = s:sub(i)
  return table.concat(out)
end

-- Open an existing target (-n) read-write; format nil probes it.
function M.open_target(path, format, cache, total)
  local img, msg = vdk.open(path, { format = format, readonly = false, cache = cache })
  if not img then return nil, ("Could not open '%s': %s"):format(path, msg) end
  if img.size < total then
    img:close()
    return nil, "output file is smaller than input file"
  end
  return img
end

-- Close the target; on success move a temporary file to its name, on
-- failure remove it. Returns true or nil, message.
function M.commit_target(img, tmp, path, ok)
  local closed, msg = img:close()
  if not ok or not closed then
    if tmp then os.remove(tmp) end
    return nil, msg
  end
  if tmp then
    if exists(path) then
      os.remove(tmp)
      return nil, ("'%s' appeared while converting; left it alone"):format(path)
    end
    local renamed, err = os.rename(tmp, path)
    if not renamed then
      os.remove(tmp)
      return nil, ("cannot rename the new image to '%s': %s"):format(path, err)
    end
  end
  return true
end

-- ---------------------------------------------------------------- progress

local function clock(seconds)
  if not seconds or seconds ~= seconds or seconds == math.huge then return "--:--" end
  seconds = math.floor(seconds + 0.5)
  if seconds >= 3600 then
    return ("%d:%02d:%02d"):format(seconds // 3600, seconds % 3600 // 60, seconds % 60)
  end
  return ("%d:%02d"):format(seconds // 60, seconds % 60)
end

-- The one-line bar: [=====>     ]  45%  1.2 GiB / 2 GiB  512 MiB/s  ETA 0:02
function M.bar_line(p, width)
  local frac = p.total > 0 and p.done / p.total or 1
  local cells = (width or 24)
  local full = math.floor(frac * cells)
  local bar = ("="):rep(full) .. (full < cells and ">" or "") .. (" "):rep(math.max(cells - full - 1, 0))
  local eta = p.rate > 0 and (p.total - p.done) / p.rate or nil
  local tail = p.phase == "flushing" and "flushing" or p.phase == "done" and "done"
               or ("ETA " .. clock(eta))
  return ("[%s] %3d%%  %s / %s  %s/s  %s"):format(bar, math.floor(frac * 100),
    human(p.done), human(p.total), human(math.floor(p.rate)), tail)
end

-- A function(progress) for on_progress that draws what opts asks for:
--   bar = true     a bar redrawn in place on out (a terminal)
--   percent = true qemu-img's "    (45.00/100%)\r" on out
--   fd = N         one JSON object per line on file descriptor N
-- and finish() to end the bar's line.
function M.progress_display(opts)
  local out = opts.out or io.stdout
  local jsonf
  if opts.fd then
    jsonf = assert(io.open("/dev/fd/" .. opts.fd, "w"))
    jsonf:setvbuf("line")
  end
  local drawn = false
  local function show(p)
    if opts.bar then
      out:write("\r", M.bar_line(p), "\27[K")
      out:flush()
      drawn = true
    elseif opts.percent then
      out:write(("    (%3.2f/100%%)\r"):format(p.total > 0 and 100 * p.done / p.total or 100))
      out:flush()
      drawn = true
    end
    if jsonf then
      jsonf:write(('{"done": %d, "total": %d, "rate": %d, "phase": "%s", "elapsed": %.3f}\n')
        :format(p.done, p.total, math.floor(p.rate), p.phase, p.elapsed))
    end
  end
  local function finish()
    if drawn then out:write("\n") out:flush() end
    if jsonf then jsonf:close() jsonf = nil end
  end
  return show, finish
end

-- ---------------------------------------------------------------- summary

-- One line for a finished copy.
function M.summary(r)
  local src = #r.sources == 1 and ("'%s'"):format(r.sources[1])
              or ("%d images"):format(#r.sources)
  local p = r.progress
  local skipped = p.bytes_skipped + p.bytes_zeroed
  local line = ("Converted %s to '%s' (%s): %s in %.2f s (%s/s); %s written, %s zero or unallocated")
    :format(src, r.target, r.format, human(p.total), p.elapsed,
            human(math.floor(p.elapsed > 0 and p.total / p.elapsed or 0)),
            human(p.bytes_written), human(skipped))
  if (p.bytes_shared or 0) > 0 then -- convert --keep-snapshots
    line = line .. (", %s shared with the previous snapshot"):format(human(p.bytes_shared))
  end
  return line
end

-- The --output=json object for a finished copy.
function M.summary_json(r)
  local p = r.progress
  return json.encode({
    sources = json.array(r.sources), target = r.target, format = r.format,
    ["virtual-size"] = p.total, ["bytes-read"] = p.bytes_read,
    ["bytes-written"] = p.bytes_written, ["bytes-zeroed"] = p.bytes_zeroed,
    ["bytes-skipped"] = p.bytes_skipped, ["bytes-shared"] = p.bytes_shared,
    milliseconds = math.floor(p.elapsed * 1000 + 0.5),
    rate = math.floor(p.elapsed > 0 and p.total / p.elapsed or 0),
    cache = r.cache, flushed = r.cache ~= "unsafe",
  })
end

-- What a terminal user is told once the target is closed.
function M.durability_line(cache)
  if cache == "unsafe" then
    return "Not flushed (cache=unsafe): the data may still be only in the page cache."
  end
  return ("The data is on disk (flushed, cache=%s)."):format(cache)
end

return M
