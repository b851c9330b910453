-- vdk.getopt: command-line option parsing, GNU getopt_long style (as qemu-img).
--
--   local getopt = require "vdk.getopt"
--   local opts, operands = getopt.parse(args, {
--     { short = "f", long = "format", value = true },   -- -f qcow2, -fqcow2, --format=qcow2
--     { short = "o", name = "options", value = true, list = true }, -- repeatable
--     { long = "backing-chain" },                        -- a flag
--     { short = "q" },
--   })
--   -- opts.format == "qcow2", opts["backing-chain"] == true, opts.options == {...}
--
-- Each option is stored under its `name`, else its long name, else its short
-- letter. Flags become true; options with a value keep the last value given,
-- or all of them in order with `list = true`.
--
-- Rules: short options may be grouped (-qU) and take their value attached
-- (-fqcow2) or as the next argument (-f qcow2); long options take it after
-- '=' or as the next argument, and may be abbreviated to any unambiguous
-- prefix (--out=json). Options and operands may be mixed; "--" ends the
-- options; a lone "-" is an operand. On error, parse returns nil and a
-- message in qemu-img's words ("unrecognized option '--bogus'").
local getopt = {}

local function key_of(def)
  return def.name or def.long or def.short
end

local function store(opts, def, value)
  local key = key_of(def)
  if def.list then
    opts[key] = opts[key] or {}
    table.insert(opts[key], value)
  else
    opts[key] = value
  end
end

-- The definition whose long name is `name` or starts with it (if only one does).
local function find_long(defs, name)
  local found
  for _, def in ipairs(defs) do
    if def.long == name then return def end
    if def.long and def.long:sub(1, #name) == name then
      if found then return nil end -- ambiguous
      found = def
    end
  end
  return found
end

local function find_short(defs, letter)
  for _, def in ipairs(defs) do
    if def.short == letter then return def end
  end
end

-- Parse one "--name[=value]" argument; i is its index. Returns the next index.
local function parse_long(args, i, defs, opts)
  local word = args[i]
  local name, value = word:match("^%-%-([^=]*)=(.*)$")
  name = name or word:sub(3)
  local def = find_long(defs, name)
  if not def then
    return nil, ("unrecognized option '%s'"):format(word)
  end
  if not def.value then
    if value then return nil, ("unrecognized option '%s'"):format(word) end
    store(opts, def, true)
    return i + 1
  end
  if not value then
    i = i + 1
    value = args[i]
    if value == nil then
      return nil, ("missing argument for option '--%s'"):format(def.long)
    end
  end
  store(opts, def, value)
  return i + 1
end

-- Parse one "-abc" group of short options. Returns the next index.
local function parse_short(args, i, defs, opts)
  local word = args[i]
  local pos = 2
  while pos <= #word do
    local letter = word:sub(pos, pos)
    local def = find_short(defs, letter)
    if not def then
      return nil, ("unrecognized option '%s'"):format(word)
    end
    if def.value then
      local value = word:sub(pos + 1)
      if value == "" then
        i = i + 1
        value = args[i]
        if value == nil then
          return nil, ("missing argument for option '-%s'"):format(letter)
        end
      end
      store(opts, def, value)
      return i + 1
    end
    store(opts, def, true)
    pos = pos + 1
  end
  return i + 1
end

-- Parse args[first..#args] (first defaults to 1) against defs.
-- Returns opts, operands; or nil, message.
function getopt.parse(args, defs, first)
  local opts, operands = {}, {}
  local i = first or 1
  while i <= #args do
    local word = args[i]
    local err
    if word == "--" then
      table.move(args, i + 1, #args, #operands + 1, operands)
      break
    elseif word:sub(1, 2) == "--" then
      i, err = parse_long(args, i, defs, opts)
    elseif word:sub(1, 1) == "-" and #word > 1 then
      i, err = parse_short(args, i, defs, opts)
    else
      operands[#operands + 1] = word
      i = i + 1
    end
    if not i then return nil, err end
  end
  return opts, operands
end

return getopt
