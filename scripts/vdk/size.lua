-- vdk.size: sizes as people write them ("64M", "1.5G", "0x10000") and as
-- qemu-img prints them ("64 MiB").
--
--   local size = require "vdk.size"
--   size.parse("1.5G")      --> 1610612736
--   size.parse("12Q")       --> nil, "invalid size '12Q'"
--   size.human(67108864)    --> "64 MiB"
--
-- parse() follows qemu-img: a decimal number with an optional fraction, or a
-- hexadecimal one (0x...), then an optional unit: b/B (bytes), k/K, M, G, T,
-- P, E (powers of 1024). A fraction needs a unit bigger than a byte; the
-- result is rounded down to a whole byte and must fit in 63 bits.
local size = {}

local UNITS = {
  b = 0, B = 0, k = 10, K = 10, m = 20, M = 20, g = 30, G = 30,
  t = 40, T = 40, p = 50, P = 50, e = 60, E = 60,
}

-- Returns the size in bytes (an integer), or nil and a message.
function size.parse(text)
  if math.type(text) == "integer" then
    if text < 0 then return nil, ("invalid size %d: negative"):format(text) end
    return text
  end
  if type(text) ~= "string" then
    return nil, ("invalid size: expected a string or an integer, got %s"):format(type(text))
  end
  local s = text:gsub("^%s+", ""):gsub("^%+", "")
  local whole, frac, unit
  local hex, hunit = s:match("^0[xX](%x+)(%a?)$")
  if hex then
    whole, frac, unit = tonumber(hex, 16), nil, hunit
    -- tonumber wraps around past 64 bits: refuse what does not fit in 63.
    if #hex:gsub("^0+", "") > 16 or whole < 0 then whole = nil end
  else
    local digits, fdigits, u = s:match("^(%d+)%.?(%d*)(%a?)$")
    if not digits then return nil, ("invalid size '%s'"):format(text) end
    whole = math.tointeger(tonumber(digits))
    frac, unit = fdigits, u
  end
  local shift = unit == "" and 0 or UNITS[unit]
  if not shift then return nil, ("invalid size '%s'"):format(text) end
  if not whole then return nil, ("size '%s' is too large"):format(text) end
  local mul = 1 << shift
  local fraction = (frac and frac ~= "") and tonumber("0." .. frac) or 0
  if fraction ~= 0 and mul == 1 then
    return nil, ("invalid size '%s': a fraction needs a unit (k, M, G ...)"):format(text)
  end
  if whole > math.maxinteger // mul then
    return nil, ("size '%s' is too large"):format(text)
  end
  local bytes = whole * mul
  local extra = math.floor(fraction * mul)
  if bytes > math.maxinteger - extra then
    return nil, ("size '%s' is too large"):format(text)
  end
  return bytes + extra
end

local SUFFIXES = { "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei" }

-- qemu's size_to_str: three significant digits and a binary unit, switching
-- to the next unit from 1000 of the current one ("1000 KiB" is "0.977 MiB").
function size.human(bytes)
  local x = bytes / (1000 / 1024)
  local e = 0
  while x >= 1 do
    x = x / 2
    e = e + 1
  end
  local i = e > 0 and (e - 1) // 10 or 0
  return ("%0.3g %sB"):format(bytes / (1 << (i * 10)), SUFFIXES[i + 1])
end

return size
