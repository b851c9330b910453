-- vdk info: what qemu-img info prints, in its human or JSON form.
--
-- The image is opened read-only without its backing chain (so an image
-- whose backing file is missing can still be inspected), unless
-- --backing-chain asks for every layer.
local vdk = require "vdk"
local cli = require "vdk.cli"
local json = require "vdk.json"

local info = {
  name = "info",
  summary = "show information about an image",
  usage = "info [-f fmt] [--output=human|json] [--backing-chain] [-U] filename",
  help = [[
  -f, --format=FMT    the image format (default: probe it)
  --output=FMT        human (default) or json, as qemu-img info prints them
  --backing-chain     show every image of the backing chain, top first
  -U, --force-share   open the image even if another process has it open
                      for writing (the result may be inconsistent)
  -h, --help          show this help

Exit status: 0 on success, 1 when the image cannot be opened or read, or
on a usage error.
]],
  options = {
    { short = "f", long = "format", value = true },
    { long = "output", value = true },
    { long = "backing-chain" },
    { short = "U", long = "force-share" },
  },
}

-- The "Format specific information:" lines: the data in qemu's key order,
-- dashes in keys shown as spaces.
local function format_specific_lines(spec, out)
  local keys = {}
  for k in pairs(spec.data) do keys[#keys + 1] = k end
  json.qemu_order(keys)
  out[#out + 1] = "Format specific information:"
  for _, k in ipairs(keys) do
    out[#out + 1] = ("    %s: %s"):format(k:gsub("-", " "), tostring(spec.data[k]))
  end
end

-- One image as qemu-img info's human output.
function info.human(t)
  local out = {
    "image: " .. t.filename,
    "file format: " .. t.format,
    ("virtual size: %s (%d bytes)"):format(vdk.size_to_str(t["virtual-size"]), t["virtual-size"]),
    "disk size: " .. (t["actual-size"] and vdk.size_to_str(t["actual-size"]) or "unavailable"),
  }
  if t["cluster-size"] then out[#out + 1] = "cluster_size: " .. t["cluster-size"] end
  if t["backing-filename"] then
    local line = "backing file: " .. t["backing-filename"]
    local full = t["full-backing-filename"]
    if not full then
      line = line .. " (cannot determine actual path)"
    elseif full ~= t["backing-filename"] then
      line = line .. (" (actual path: %s)"):format(full)
    end
    out[#out + 1] = line
    if t["backing-filename-format"] then
      out[#out + 1] = "backing file format: " .. t["backing-filename-format"]
    end
  end
  if t.snapshots then out[#out + 1] = require("vdk.snapshot").info_text(t.snapshots) end
  if t["format-specific"] then format_specific_lines(t["format-specific"], out) end
  return table.concat(out, "\n") .. "\n"
end

-- The info table(s) for the file, or nil, message.
local function collect(filename, opts)
  local chain = opts["backing-chain"] or false
  local img, msg = vdk.open(filename, {
    format = opts.format, force_share = opts["force-share"] or false, backing = chain,
  })
  if not img then return nil, msg end
  local t, err = img:info({ backing_chain = chain })
  local ok, serr = t and require("vdk.snapshot").add_to_info(img, t, chain)
  if t and not ok then t, err = nil, serr end
  img:close()
  return t, err
end

function info.run(opts, operands)
  local output = opts.output or "human"
  if output ~= "human" and output ~= "json" then
    return cli.fail("--output must be used with human or json as argument.")
  end
  if #operands ~= 1 then
    return cli.usage_error("info", "Expecting one image file name")
  end
  local t, msg = collect(operands[1], opts)
  if not t then return cli.fail_file(operands[1], msg) end
  local list = opts["backing-chain"] and t or { t }
  if output == "json" then
    io.stdout:write(json.encode(opts["backing-chain"] and json.array(list) or t), "\n")
  else
    local texts = {}
    for i, layer in ipairs(list) do texts[i] = info.human(layer) end
    io.stdout:write(table.concat(texts, "\n"))
  end
  return 0
end

return info
