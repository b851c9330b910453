-- make-sample.lua: write a small sample disk image for demos and experiments.
--
--   vdk run scripts/examples/make-sample.lua OUTPUT [SIZE_MIB] [FORMAT]
--
-- The image (raw by default, 64 MiB) mixes what real disks hold: a region of
-- incompressible data, a region of compressible text, a range of written
-- zeros, and holes that were never written. The content depends only on the
-- arguments, so two runs make identical images.
local vdk = require "vdk"

local out = arg[1] or error("usage: make-sample.lua OUTPUT [SIZE_MIB] [FORMAT]")
local mib = tonumber(arg[2] or "64")
local format = arg[3] or "raw"
local MiB = 1024 * 1024
local size = mib * MiB

local img = assert(vdk.create(out, { format = format, size = size }))

-- Incompressible bytes from a small xorshift generator, 64 KiB at a time.
local x = 0x2545F491
local function noise(n)
  local t = {}
  for i = 1, n // 4 do
    x = x ~ ((x << 13) & 0xffffffff); x = x ~ (x >> 17); x = x ~ ((x << 5) & 0xffffffff)
    t[i] = string.pack("<I4", x)
  end
  return table.concat(t)
end
local text = ("vdk sample: the quick brown fox jumps over the lazy dog. "):rep(1200):sub(1, 65536)

local quarter = size // 4
for off = 0, quarter - 1, 65536 do                  -- first quarter: random data
  assert(img:write(off, noise(65536)))
end
for off = quarter, 2 * quarter - 1, 65536 do         -- second quarter: text
  assert(img:write(off, text))
end
assert(img:write_zeroes(2 * quarter, quarter // 2))  -- written zeros
-- the rest stays a hole, except one MiB of data near the end
assert(img:write(size - 2 * MiB, noise(MiB)))
assert(img:close())
print(("wrote %s: %d MiB %s sample"):format(out, mib, format))
