-- vdk measure: how large a new image would be, as qemu-img measure prints
-- it (human or JSON, the same field names: "required", "fully-allocated",
-- and "bitmaps" where it applies).
--
-- Either for an empty image of --size bytes, or for a conversion of an
-- image (whole chain). The numbers come from the target format's driver.
local vdk = require "vdk"
local cli = require "vdk.cli"
local json = require "vdk.json"
local C = require "vdk.convert"

local measure = {
  name = "measure",
  summary = "size a new image would take, for an empty disk or a conversion",
  usage = "measure [--output=human|json] [-O fmt] [-o options] "
    .. "[--size N | [-f fmt] [-l snapshot] [-U] filename]",
  help = [[
  --output=FMT        human (default) or json, as qemu-img measure prints
  -O FMT              format of the new image (default: raw)
  -o OPTIONS          its creation options (cluster_size, preallocation ...)
  --size N            measure an empty image of N bytes (suffixes k, M, G ...)
  -f FMT              format of filename (default: probe it)
  -l SNAPSHOT         measure the internal snapshot SNAPSHOT of filename
  -U, --force-share   open filename even if another process writes it
  -h, --help          show this help

"required size" is what a conversion writes (metadata and the clusters
that hold data); "fully allocated size" is the file with every cluster
allocated.

Exit status: 0 on success, 1 on any error.
]],
  options = {
    { long = "output", value = true },
    { short = "O", value = true },
    { short = "o", name = "options", value = true, list = true },
    { long = "size", value = true },
    { short = "f", value = true },
    { short = "l", value = true },
    { short = "U", long = "force-share", name = "U" },
  },
}

local SIZE_MSG = "Invalid image size specified. You may use k, M, G, T, P or E suffixes "
  .. "for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes."

-- The options checked: output, format, values, size; or nil, message [, "usage"].
local function check(opts, operands)
  local c = { output = opts.output or "human", format = opts.O or "raw" }
  if c.output ~= "human" and c.output ~= "json" then
    return nil, "--output must be used with human or json as argument."
  end
  if not C.known_format(c.format) then return nil, ("Unknown file format '%s'"):format(c.format) end
  if #operands > 1 then return nil, "At most one filename argument is allowed.", "usage" end
  if opts.size and #operands == 1 then
    return nil, "--size N cannot be used together with a filename.", "usage"
  end
  if not opts.size and #operands == 0 then
    return nil, "Either --size N or one filename must be specified.", "usage"
  end
  if opts.size then
    c.size = vdk.parse_size(opts.size)
    if not c.size then return nil, SIZE_MSG end
  end
  local values, msg = C.target_options(c.format, opts.options)
  if not values or values == "help" then
    return nil, msg or "Either --size N or one filename must be specified."
  end
  c.values = values
  return c
end

function measure.run(opts, operands)
  local c, msg, kind = check(opts, operands)
  if not c then return kind == "usage" and cli.usage_error("measure", msg) or cli.fail(msg) end
  local source
  if #operands == 1 then
    local list, err = C.open_sources(operands, { format = opts.f, force_share = opts.U })
    if not list then return cli.fail("%s", err) end
    source = list[1]
    if opts.l then
      local S = require "vdk.snapshot"
      local ref, lerr = S.parse_param(opts.l)
      local ok = false
      if ref then ok, lerr = S.load(source, ref) end
      if not ok then
        source:close()
        return cli.fail("%s", lerr)
      end
    end
  end
  local m, err = vdk.measure{ format = c.format, size = c.size, source = source,
                              options = c.values }
  if source then source:close() end
  if not m then return cli.fail("%s", err) end
  if c.output == "json" then
    io.stdout:write(json.encode({ required = m.required, ["fully-allocated"] = m.fully_allocated,
                                  bitmaps = m.bitmaps }), "\n")
  else
    io.stdout:write(("required size: %d\nfully allocated size: %d\n")
      :format(m.required, m.fully_allocated))
    if m.bitmaps then io.stdout:write(("bitmaps size: %d\n"):format(m.bitmaps)) end
  end
  return 0
end

return measure
