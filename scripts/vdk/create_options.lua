-- vdk.create_options: the creation options of each format, as `vdk create`
-- lists them (-o help) and echoes them ("Formatting 'x', fmt=qcow2 ...").
--
-- Each format has a list of options in the order qemu-img prints them on its
-- "Formatting" line. An option has a name (qemu-img's), a type ("size",
-- "num", "bool" or "str", as -o help shows it), a help text, and a default
-- when qemu-img prints one even if the user gave none. The C drivers are
-- the authority on what they accept: an option listed here that a driver
-- lacks is refused by vdk_image_create with "invalid parameter".
local M = {}

M.formats = {
  raw = {
    { name = "size", type = "size", help = "Virtual disk size" },
    { name = "preallocation", type = "str",
      help = "Preallocation mode (allowed values: off, falloc, full)" },
  },
  qcow2 = {
    { name = "cluster_size", type = "size", default = "65536", help = "qcow2 cluster size" },
    { name = "extended_l2", type = "bool", default = "off", help = "Extended L2 tables" },
    { name = "preallocation", type = "str",
      help = "Preallocation mode (allowed values: off, metadata, falloc, full)" },
    { name = "compression_type", type = "str", default = "zlib",
      help = "Compression method used for image cluster compression" },
    { name = "size", type = "size", help = "Virtual disk size" },
    { name = "compat", type = "str", help = "Compatibility level (v2 [0.10] or v3 [1.1])" },
    { name = "backing_file", type = "str", help = "File name of a base image" },
    { name = "backing_fmt", type = "str", help = "Image format of the base image" },
    { name = "data_file", type = "str", help = "File name of an external data file" },
    { name = "data_file_raw", type = "bool",
      help = "The external data file must stay valid as a raw image" },
    { name = "lazy_refcounts", type = "bool", default = "off", help = "Postpone refcount updates" },
    { name = "refcount_bits", type = "num", default = "16",
      help = "Width of a reference count entry in bits" },
  },
  qed = {
    { name = "size", type = "size", help = "Virtual disk size" },
    { name = "backing_file", type = "str", help = "File name of a base image" },
    { name = "backing_fmt", type = "str", help = "Image format of the base image" },
    { name = "cluster_size", type = "size", default = "65536", help = "Cluster size (in bytes)" },
    { name = "table_size", type = "size", help = "L1/L2 table size (in clusters)" },
  },
}

local TYPE_TEXT = { size = "<size>", num = "<num>", bool = "<bool (on/off)>", str = "<str>" }

-- The option named `name` of `format`, or nil.
function M.find(format, name)
  for _, opt in ipairs(M.formats[format] or {}) do
    if opt.name == name then return opt end
  end
end

-- The text of `vdk create -f FORMAT -o help` (options sorted by name).
function M.help(format)
  local list = {}
  for _, opt in ipairs(M.formats[format] or {}) do list[#list + 1] = opt end
  table.sort(list, function(a, b) return a.name < b.name end)
  local lines = { ("Supported %s options:"):format(format) }
  for _, opt in ipairs(list) do
    local left = ("%s=%s"):format(opt.name, TYPE_TEXT[opt.type])
    lines[#lines + 1] = ("  %-22s - %s"):format(left, opt.help)
  end
  return table.concat(lines, "\n") .. "\n"
end

-- Split a -o argument ("a=1,b=x,,y") into an ordered list of {name, value}.
-- ",," stands for a comma inside a value; a bare name means name=on.
function M.parse(text)
  local list, item = {}, {}
  local i = 1
  while i <= #text + 1 do
    local c = text:sub(i, i)
    if c == "," and text:sub(i + 1, i + 1) == "," then
      item[#item + 1] = ","
      i = i + 2
    elseif c == "," or c == "" then
      local s = table.concat(item)
      if s ~= "" then
        local name, value = s:match("^([^=]*)=(.*)$")
        list[#list + 1] = { name or s, value or "on" }
      end
      item = {}
      i = i + 1
    else
      item[#item + 1] = c
      i = i + 1
    end
  end
  return list
end

-- The "name=value ..." part of the Formatting line: the format's options in
-- qemu-img's order, with defaults, then any option this table does not know.
-- `values` maps names to the (normalized) values the user gave.
function M.describe(format, values)
  local parts, seen = {}, {}
  for _, opt in ipairs(M.formats[format] or {}) do
    local v = values[opt.name] or opt.default
    if v then parts[#parts + 1] = opt.name .. "=" .. v:gsub(",", ",,") end
    seen[opt.name] = true
  end
  local extra = {}
  for name in pairs(values) do
    if not seen[name] then extra[#extra + 1] = name end
  end
  table.sort(extra)
  for _, name in ipairs(extra) do
    parts[#parts + 1] = name .. "=" .. values[name]:gsub(",", ",,")
  end
  return table.concat(parts, " ")
end

return M
