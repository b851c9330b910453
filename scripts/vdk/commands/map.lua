-- vdk map: the image's allocation map, as qemu-img map prints it.
--
-- JSON lists every extent (start, length, depth, present, zero, data and,
-- when the data has a place in a file, offset). The human table lists only
-- the ranges that hold data, with where they lie ("Mapped to") and in which
-- file; it cannot show compressed data, which has no such place.
local vdk = require "vdk"
local cli = require "vdk.cli"

local map = {
  name = "map",
  summary = "show the allocation map of an image",
  usage = "map [-f fmt] [--output=human|json] [--start-offset=OFFSET] [--max-length=LEN] [-U] [--svg=FILE] filename",
  help = [[
  -f, --format=FMT       the image format (default: probe it)
  --output=FMT           human (default) or json, as qemu-img map prints them
  --start-offset=OFFSET  start at this guest offset (suffixes k, M, G ...)
  --max-length=LEN       map at most LEN bytes
  -U, --force-share      open the image even if another process has it open
                         for writing (the result may be inconsistent)
  --svg=FILE             draw the map as an SVG picture into FILE instead:
                         the guest space coloured by data, backing layers,
                         compressed, zero and unallocated, and the host file
                         beside it (a bounded number of cells at any size)
  -h, --help             show this help

Exit status: 0 on success, 1 when the image cannot be opened or its
metadata read, when the human output meets compressed data, or on a usage
error.
]],
  options = {
    { short = "f", long = "format", value = true },
    { long = "output", value = true },
    { long = "start-offset", value = true },
    { long = "max-length", value = true },
    { short = "U", long = "force-share" },
    { long = "svg", value = true },
  },
}

local function bool(b) return b and "true" or "false" end

-- One extent as a line of qemu-img map's JSON (without separator).
function map.json_entry(e)
  local s = ('{ "start": %d, "length": %d, "depth": %d, "present": %s, "zero": %s, "data": %s')
      :format(e.start, e.length, e.depth, bool(e.present), bool(e.zero), bool(e.data))
  if e.offset then s = s .. (', "offset": %d'):format(e.offset) end
  return s .. "}"
end

-- One extent as a row of the human table, or nil for ranges without data.
function map.human_row(e)
  if not e.data or e.zero then return nil end
  return ("%#-16x%#-16x%#-16x%s\n"):format(e.start, e.length, e.offset or 0, e.filename or "")
end

local COMPRESSED_MSG = "File contains external, encrypted or compressed clusters."

-- Print the extents from `next_extent` (an iterator) in `output` form.
-- Returns true, or nil and a message.
local function print_map(next_extent, output, start)
  local out = io.stdout
  if output == "human" then
    out:write(("%-16s%-16s%-16s%s\n"):format("Offset", "Length", "Mapped to", "File"))
  else
    out:write("[")
  end
  local count = 0
  for e in next_extent do
    if output == "human" then
      if e.data and not e.offset then return nil, COMPRESSED_MSG end
      local row = map.human_row(e)
      if row then out:write(row) end
    else
      out:write(count > 0 and ",\n" or "", map.json_entry(e))
    end
    count = count + 1
  end
  if output == "json" then
    -- Like qemu-img, an empty range still prints one (empty) entry.
    if count == 0 then
      out:write(map.json_entry({ start = start, length = 0, depth = 0 }))
    end
    out:write("]\n")
  end
  return true
end

-- A size option's value, or nil and qemu-img's complaint.
local function size_option(text, what)
  if text == nil then return nil end
  local n = vdk.parse_size(text)
  if not n then
    return nil, ("Invalid %s specified. You may use k, M, G, T, P or E suffixes for "
      .. "kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes."):format(what)
  end
  return n
end

function map.run(opts, operands)
  local output = opts.output or "human"
  if output ~= "human" and output ~= "json" then
    return cli.fail("--output must be used with human or json as argument.")
  end
  if #operands ~= 1 then
    return cli.usage_error("map", "Expecting one image file name")
  end
  local start, err = size_option(opts["start-offset"], "start offset")
  if err then return cli.fail(err) end
  local length
  length, err = size_option(opts["max-length"], "max length")
  if err then return cli.fail(err) end

  local img, msg = vdk.open(operands[1], {
    format = opts.format, force_share = opts["force-share"] or false,
  })
  if not img then return cli.fail_file(operands[1], msg) end
  if opts.svg then
    local sum, err = require("vdk.svg").write(img, opts.svg)
    img:close()
    if not sum then return cli.fail("Could not draw the map: %s", err) end
    return 0
  end
  local iter = img:map({ start = start, length = length })
  local ok, printed, perr = pcall(print_map, iter, output, start or 0)
  img:close()
  if not ok then return cli.fail("Could not read file metadata: %s", printed) end
  if not printed then return cli.fail(perr) end
  return 0
end

return map
