-- vdk resize: change an image's virtual size, as qemu-img resize does (same
-- options, messages and exit codes): an absolute size, or +SIZE / -SIZE
-- relative to the current one; making it smaller needs --shrink.
--
-- The size is the last argument and is taken off before the options are
-- parsed, so that "-1G" is a size and not an option (qemu-img does the same).
local vdk = require "vdk.core" -- (not "vdk": a command that starts fast)
local cli = require "vdk.cli"
local getopt = require "vdk.getopt"
local parse_size = require("vdk.size").parse

local resize = {
  name = "resize",
  summary = "change the virtual size of an image",
  usage = "resize [-f fmt] [--preallocation=MODE] [-q] [--shrink] filename [+|-]size",
  help = [[
  -f FMT              format of filename (default: probe it)
  --preallocation=M   off (default), metadata (qcow2), falloc or full: how the
                      added part is allocated (growing only)
  --shrink            allow a smaller size (the data past the new end is lost)
  -q                  quiet: no "Image resized." line
  -h, --help          show this help

size is absolute, or relative with + or - (suffixes k, M, G, T, P, E).

Exit status: 0 on success, 1 on any error.
]],
  raw_args = true,
  options = {
    { short = "f", value = true },
    { long = "preallocation", value = true },
    { long = "shrink" },
    { short = "q" },
  },
}

local SIZE_MSG = "Invalid image size specified. You may use k, M, G, T, P or E suffixes "
  .. "for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes."
local PREALLOC = { off = true, metadata = true, falloc = true, full = true }

-- The options and operands: opts, filename, sign (-1, 0, 1), size; or nil,
-- message, "usage" for a usage error.
local function parse(args)
  if #args < 2 then return nil, "Not enough arguments", "usage" end
  local size_arg = args[#args]
  local defs = { { short = "h", long = "help" } }
  for _, def in ipairs(resize.options) do defs[#defs + 1] = def end
  local opts, operands = getopt.parse(table.move(args, 1, #args - 1, 1, {}), defs, 1)
  if not opts then return nil, operands, "usage" end
  if opts.help then return opts end
  if #operands ~= 1 then return nil, "Expecting image file name and size", "usage" end
  if opts.preallocation and not PREALLOC[opts.preallocation] then
    return nil, ("Invalid preallocation mode '%s'"):format(opts.preallocation)
  end
  local sign, digits = 0, size_arg
  if size_arg:sub(1, 1) == "+" then
    sign, digits = 1, size_arg:sub(2)
  elseif size_arg:sub(1, 1) == "-" then
    sign, digits = -1, size_arg:sub(2)
  end
  local n = parse_size(digits)
  if not n then return nil, SIZE_MSG end
  return opts, operands[1], sign, n
end

function resize.run(_, args)
  if args[1] == "-h" or args[1] == "--help" then
    io.stdout:write(cli.command_help(resize))
    return 0
  end
  local opts, filename, sign, n = parse(args)
  if not opts then
    return sign == "usage" and cli.usage_error("resize", filename) or cli.fail("%s", filename)
  end
  if opts.help then
    io.stdout:write(cli.command_help(resize))
    return 0
  end
  local img, msg = vdk.open(filename, { format = opts.f, readonly = false })
  if not img then return cli.fail_file(filename, msg) end
  local current = img.size
  local size = sign == 0 and n or current + sign * n
  local prealloc = opts.preallocation or "off"
  local err, engine_error
  if size <= 0 or (sign > 0 and size < current) then
    err = "New image size must be positive"
  elseif size <= current and prealloc ~= "off" then
    err = "Preallocation can only be used for growing images"
  elseif size < current and not opts.shrink then
    img:close()
    cli.fail("Use the --shrink option to perform a shrink operation.")
    io.stderr:write("vdk: warning: Shrinking an image will delete all data beyond the "
      .. "shrunken image's end. Before performing such an operation, make sure there is no "
      .. "important data there.\n")
    return 1
  end
  if not err then
    local ok, rmsg = img:resize(size, { shrink = opts.shrink or false, preallocation = prealloc })
    if not ok then err, engine_error = rmsg, true end
  end
  local ok, cmsg = img:close()
  if not err and not ok then err, engine_error = cmsg, true end
  if err then return engine_error and cli.fail_file(filename, err) or cli.fail("%s", err) end
  if not opts.q then io.stdout:write("Image resized.\n") end
  return 0
end

return resize
