-- spec/support/png.lua: a small PNG reader for the picture tests (8-bit
-- RGB or RGBA, not interlaced, as Chromium's screenshots are), over
-- lua-zlib's inflate.
--   local png = require "support.png"
--   local pic = png.read(path)        -- nil, msg when it cannot
--   local r, g, b = pic:pixel(x, y)   -- 0-based coordinates
local png = {}

local function paeth(a, b, c)
  local p = a + b - c
  local pa, pb, pc = math.abs(p - a), math.abs(p - b), math.abs(p - c)
  if pa <= pb and pa <= pc then return a end
  if pb <= pc then return b end
  return c
end

-- Undo the per-row filters; returns a table of row strings.
local function unfilter(raw, width, height, bpp)
  local stride = width * bpp
  local rows, prev = {}, nil
  local pos = 1
  for y = 1, height do
    local ftype = raw:byte(pos)
    local line = { raw:byte(pos + 1, pos + stride) }
    pos = pos + stride + 1
    for i = 1, stride do
      local a = i > bpp and line[i - bpp] or 0
      local b = prev and prev[i] or 0
      local c = (prev and i > bpp) and prev[i - bpp] or 0
      local x = line[i]
      if ftype == 1 then x = x + a
      elseif ftype == 2 then x = x + b
      elseif ftype == 3 then x = x + (a + b) // 2
      elseif ftype == 4 then x = x + paeth(a, b, c) end
      line[i] = x & 0xff
    end
    rows[y] = line
    prev = line
  end
  return rows
end

function png.read(path)
  local ok, zlib = pcall(require, "zlib")
  if not ok then return nil, "lua-zlib is not installed" end
  local f = io.open(path, "rb")
  if not f then return nil, "cannot open " .. path end
  local data = f:read("a")
  f:close()
  if data:sub(1, 8) ~= "\137PNG\r\n\26\n" then return nil, "not a PNG file" end
  local pos, idat = 9, {}
  local width, height, depth, ctype, interlace
  while pos < #data do
    local len, kind = string.unpack(">I4c4", data, pos)
    local body = data:sub(pos + 8, pos + 7 + len)
    if kind == "IHDR" then
      width, height, depth, ctype, _, _, interlace = string.unpack(">I4I4BBBBB", body)
    elseif kind == "IDAT" then
      idat[#idat + 1] = body
    elseif kind == "IEND" then
      break
    end
    pos = pos + 12 + len
  end
  if depth ~= 8 or interlace ~= 0 or (ctype ~= 2 and ctype ~= 6) then
    return nil, ("unsupported PNG (depth %s, colour type %s)"):format(depth, ctype)
  end
  local bpp = ctype == 6 and 4 or 3
  local raw = zlib.inflate()(table.concat(idat))
  local rows = unfilter(raw, width, height, bpp)
  return {
    width = width, height = height,
    pixel = function(_, x, y)
      local row = rows[y + 1]
      local i = x * bpp + 1
      return row[i], row[i + 1], row[i + 2]
    end,
  }
end

return png
