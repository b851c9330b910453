-- vdk create: make a new image, as qemu-img create does.
--
-- Steps: gather the options (-o lists, -b/-F), work out the size (the
-- operand, -o size=, or the backing file's size), check the backing file
-- can be opened (unless -u), print the "Formatting ..." line (unless -q),
-- then create the file through vdk.create.
local vdk = require "vdk"
local cli = require "vdk.cli"
local create_options = require "vdk.create_options"

local create = {
  name = "create",
  summary = "create a new image",
  usage = "create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]",
  help = [[
  -f FMT              the image format (default: raw)
  -b BACKING_FILE     the backing file of the new image (qcow2); a relative
                      name is taken relative to the new image's folder
  -F BACKING_FMT      the backing file's format (required with -b)
  -u                  do not open the backing file (then the size must be
                      given)
  -o OPTIONS          format options, comma separated: -o cluster_size=4k,
                      lazy_refcounts=on; ',,' is a comma inside a value;
                      '-o help' lists the format's options. May be repeated.
  -q                  quiet: do not print the "Formatting" line
  -h, --help          show this help

'size' is in bytes, with optional suffixes k, M, G, T, P, E (powers of
1024); it may be left out when a backing file gives it.

Exit status: 0 on success, 1 on any error (usage, options, the backing file,
or creating the file).
]],
  options = {
    { short = "q" },
    { short = "f", value = true },
    { short = "b", value = true },
    { short = "F", value = true },
    { short = "u" },
    { short = "o", name = "options", value = true, list = true },
  },
}

local SIZE_HINT = "You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, "
  .. "gigabytes, terabytes, petabytes and exabytes."

-- Resolve a backing file name against the new image's folder (as qemu does).
local function backing_path(image, name)
  if name:sub(1, 1) == "/" or name:match("^[^/]+:") then return name end
  local dir = image:match("^(.*/)")
  return dir and dir .. name or name
end

-- Normalize a size-typed option to decimal bytes; returns value or nil, msg.
local function normalize(format, name, value)
  local def = create_options.find(format, name)
  if def and (def.type == "size" or def.type == "num") then
    local n = vdk.parse_size(value)
    if not n then
      return nil, ("Parameter '%s' expects a %s"):format(name,
        def.type == "size" and "size (suffixes k, M, G, T, P, E)" or "number")
    end
    return ("%d"):format(n)
  end
  return value
end

-- The -o lists, -b and -F as one table of name -> value, or nil, msg.
-- Returns "help" when -o help (or ?) was given.
local function gather(opts, format)
  local values = {}
  for _, text in ipairs(opts.options or {}) do
    for _, pair in ipairs(create_options.parse(text)) do
      local name, value = pair[1], pair[2]
      if name == "help" or name == "?" then return "help" end
      -- Keys that vdk.create keeps for itself are no format's options.
      if name == "format" or name == "cache" or name == "open" then
        return nil, ("Invalid parameter '%s'"):format(name)
      end
      local v, msg = normalize(format, name, value)
      if not v then return nil, msg end
      values[name] = v
    end
  end
  if opts.b then values.backing_file = opts.b end
  if opts.F then values.backing_fmt = opts.F end
  return values
end

-- The virtual size in bytes, or nil and a message. Opens the backing file
-- (to check it, and for its size) unless -u.
local function image_size(filename, size_text, values, unsafe)
  local size
  if size_text then
    local msg
    size, msg = vdk.parse_size(size_text)
    if not size then
      return nil, msg:match("too large")
        and "Invalid image size specified. Must be between 0 and 9223372036854775807."
        or "Invalid image size specified. " .. SIZE_HINT
    end
  elseif values.size then
    size = math.tointeger(tonumber(values.size))
  end
  if values.backing_file and not unsafe then
    local path = backing_path(filename, values.backing_file)
    local base, msg = vdk.open(path, { format = values.backing_fmt, force_share = true })
    if not base then
      return nil, ("%s: Could not open backing image: %s"):format(filename, msg)
    end
    size = size or base.size
    base:close()
  end
  if not size then
    return nil, ("%s: Image creation needs a size parameter"):format(filename)
  end
  return size
end

function create.run(opts, operands)
  local format = opts.f or "raw"
  local values, msg = gather(opts, format)
  if values == "help" then
    if not create_options.formats[format] then
      return cli.fail("Unknown file format '%s'", format)
    end
    io.stdout:write(create_options.help(format))
    return 0
  end
  if not values then return cli.fail(msg) end
  if #operands < 1 then return cli.usage_error("create", "Expecting image file name") end
  if #operands > 2 then
    return cli.usage_error("create", ("Unexpected argument: %s"):format(operands[3]))
  end
  local filename = operands[1]
  if not vdk.can_create(format) then
    for _, name in ipairs(vdk.drivers()) do
      if name == format then
        return cli.fail("%s: Format driver '%s' does not support image creation", filename, format)
      end
    end
    return cli.fail("%s: Unknown file format '%s'", filename, format)
  end
  if values.backing_file and not values.backing_fmt then
    return cli.fail("%s: Backing file specified without backing format", filename)
  end
  -- Unknown option names fail before anything is printed, as in qemu-img.
  for name in pairs(values) do
    if create_options.formats[format] and not create_options.find(format, name) then
      return cli.fail("%s: Invalid parameter '%s'", filename, name)
    end
  end
  local size
  size, msg = image_size(filename, operands[2], values, opts.u)
  if not size then return cli.fail(msg) end
  values.size = ("%d"):format(size)

  if not opts.q then
    io.stdout:write(("Formatting '%s', fmt=%s %s\n"):format(
      filename, format, create_options.describe(format, values)))
    io.stdout:flush()
  end
  local args = { format = format, size = size, open = false }
  for name, value in pairs(values) do
    if name ~= "size" then args[name] = value end
  end
  local ok, err = vdk.create(filename, args)
  if not ok then return cli.fail("%s", err) end
  return 0
end

return create
