-- spec/support/copy_util.lua: helpers shared by the convert, compare,
-- measure and copy API specs (images made with qemu-img/qemu-io, and the
-- checks every converted image must pass).
--   local X = require "support.copy_util"
--   X.mixed_raw(path, "8M")                -- data, text, written zeros, holes
--   X.assert_same(src, dst)                -- qemu-img compare says identical
--   X.assert_clean(dst)                    -- qemu-img check finds nothing
--   X.assert_holes_kept(src, dst, 65536)   -- no data where src had none
local U = require "support.util"

local X = {}

local function sh(fmt, ...)
  return U.must(fmt, ...)
end
X.sh = sh

-- A raw image: random data at 0 (256 KiB), compressible text at 1 MiB
-- (192 KiB), written zeros at 2 MiB (512 KiB), random data straddling 3 MiB
-- (12 KiB from 3 MiB - 4 KiB), a last sector of text; holes elsewhere.
function X.mixed_raw(path, size)
  size = size or "8M"
  sh("qemu-img create -q -f raw %s %s", U.q(path), size)
  sh("dd if=/dev/urandom of=%s bs=64k count=4 conv=notrunc status=none", U.q(path))
  sh("qemu-io -f raw -c 'write -P 0x61 1M 192k' -c 'write -z 2M 512k' %s", U.q(path))
  sh("dd if=/dev/urandom of=%s bs=4k count=3 seek=767 conv=notrunc status=none", U.q(path))
  sh("dd if=/dev/zero of=%s bs=512 count=1 seek=2048 conv=notrunc status=none", U.q(path))
  local bytes = U.must("qemu-img info --output=json %s", U.q(path)):match('"virtual%-size": (%d+)')
  sh("qemu-io -f raw -c 'write -P 0x62 %d 512' %s", tonumber(bytes) - 512, U.q(path))
  return path
end

-- A qcow2 image with data, zero clusters, unallocated ranges and
-- compressed clusters; opts are extra qemu-img create -o options.
function X.mixed_qcow2(path, size, opts)
  sh("qemu-img create -q -f qcow2 %s %s %s", opts and ("-o " .. U.q(opts)) or "",
     U.q(path), size or "8M")
  local clen = (opts or ""):find("cluster_size=2M") and "2M" or "128k"
  sh("qemu-io -c 'write -P 0x11 0 300k' -c 'write -z 1M 256k' -c 'write -c -P 0x22 2M %s' "
     .. "-c 'write -P 0x33 5M 4k' -c 'write -P 0 6M 64k' %s", clen, U.q(path))
  return path
end

function X.assert_same(a, b, extra)
  local ok, out = U.run("qemu-img compare %s %s %s", extra or "", U.q(a), U.q(b))
  assert(ok and out:find("Images are identical"), ("%s vs %s: %s"):format(a, b, out))
end

function X.assert_clean(path)
  local ok, out = U.run("qemu-img check %s", U.q(path))
  assert(ok and out:find("No errors were found"), ("%s: %s"):format(path, out))
  assert(not out:find("leaked"), ("%s: %s"):format(path, out))
end

-- Data extents of an image per qemu-img map (data that is not known to be
-- zero, so preallocated clusters do not count): list of {start, stop}.
function X.data_ranges(path)
  local cjson = assert(U.cjson(), "lua-cjson is needed")
  local list = {}
  for _, e in ipairs(cjson.decode(U.must("qemu-img map --output=json %s", U.q(path)))) do
    if e.data and not e.zero then list[#list + 1] = { e.start, e.start + e.length } end
  end
  return list
end

-- Every data byte of dst lies in a block of `grain` bytes where src has data.
function X.assert_holes_kept(src, dst, grain)
  local blocks = {}
  for _, r in ipairs(X.data_ranges(src)) do
    for b = r[1] // grain, (r[2] - 1) // grain do blocks[b] = true end
  end
  for _, r in ipairs(X.data_ranges(dst)) do
    for b = r[1] // grain, (r[2] - 1) // grain do
      assert(blocks[b], ("%s has data at %d where %s has none"):format(dst, b * grain, src))
    end
  end
end

-- Allocated bytes of a qcow2 image per qemu-img check ("N/M = ... allocated").
function X.allocated_clusters(path)
  local out = U.must("qemu-img check %s", U.q(path))
  return tonumber(out:match("(%d+)/%d+ = [%d.]+%% allocated"))
end

-- Run vdk with arguments; returns code, stdout, stderr.
X.vdk = U.vdk_cmd

-- Run a Lua script (text) under `vdk run` with extra arguments.
function X.vdk_script(dir, text, ...)
  local path = dir .. "/script.lua"
  U.write_file(path, text)
  return U.vdk_cmd("run", path, ...)
end

-- The files of a folder (names), sorted.
function X.listdir(dir)
  local p = io.popen("ls -1A -- " .. U.q(dir))
  local names = {}
  for n in p:lines() do names[#names + 1] = n end
  p:close()
  table.sort(names)
  return names
end

return X
