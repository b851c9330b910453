-- bench/gen-images.lua: make the benchmark's input images, reproducibly.
--
--   vdk run bench/gen-images.lua DIR [SIZE_MIB]
--
-- DIR/mixed.raw     SIZE_MIB (default 2048) MiB in 1 MiB chunks: chunk i is,
--                   by a fixed hash of i, incompressible data (25%),
--                   compressible text (20%), written zeros (15%) or a hole
--                   (40%). The incompressible bytes are an AES-CTR key
--                   stream with a fixed key (openssl), the text is numbered
--                   log lines: the same bytes on every machine.
-- DIR/mixed.qcow2   the same disk as qcow2 (qemu-img convert)
-- DIR/mixed-zlib.qcow2, DIR/mixed-zstd.qcow2   compressed (qemu-img convert -c)
-- DIR/chain3.qcow2  a 4-deep chain: chain0.raw (a copy of mixed.raw) under
--                   three qcow2 overlays, each rewriting 1/16 of the chunks
-- DIR/sparse.qcow2  1 TiB qcow2 with 4 KiB written every 512 MiB for the
--                   first 1800 slots: 1800 L2 tables, almost no data
-- Existing files are kept (delete DIR to regenerate).
local dir = assert(arg[1], "usage: vdk run bench/gen-images.lua DIR [SIZE_MIB]")
local mib = math.tointeger(tonumber(arg[2] or "2048"))
local vdk = require "vdk"

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
local function sh(cmd)
  local ok = os.execute(cmd)
  if not ok then error("command failed: " .. cmd) end
end
local function exists(p)
  local f = io.open(p)
  if f then f:close() end
  return f ~= nil
end
local function path(name) return dir .. "/" .. name end

sh("mkdir -p " .. q(dir))

-- Kind of chunk i: a multiplicative hash keeps the mix spread evenly.
local function kind(i)
  local h = (i * 2654435761) % 4294967296 % 100
  if h < 25 then return "data" elseif h < 45 then return "text"
  elseif h < 60 then return "zero" end
  return "hole"
end

local function make_mixed(file)
  local pool_path = path(".pool")
  sh(("openssl enc -aes-128-ctr -nosalt -K 000102030405060708090a0b0c0d0e0f "
      .. "-iv 00000000000000000000000000000000 -in /dev/zero 2>/dev/null | head -c %d > %s")
     :format(64 << 20, q(pool_path)))
  local pool = assert(io.open(pool_path, "rb")):read("a")
  os.remove(pool_path)
  local lines = {}
  for n = 1, 20000 do
    lines[#lines + 1] = ("%08d INFO worker-%d request %d served in %d us\n")
      :format(n, n % 7, n * 31 % 100000, n * 17 % 5000)
  end
  local text = table.concat(lines):sub(1, 1 << 20)
  text = text .. ("-"):rep((1 << 20) - #text)
  local zeros = ("\0"):rep(1 << 20)
  local img = assert(vdk.create(file, { format = "raw", size = mib << 20 }))
  for i = 0, mib - 1 do
    local k, off = kind(i), i << 20
    if k == "data" then
      local p = (i * 37 % 64) << 20
      assert(img:write(off, pool:sub(p + 1, p + (1 << 20))))
    elseif k == "text" then
      assert(img:write(off, text))
    elseif k == "zero" then
      assert(img:write(off, zeros))
    end
  end
  assert(img:close())
end

local function make_chain()
  sh(("cp --sparse=always %s %s"):format(q(path("mixed.raw")), q(path("chain0.raw"))))
  local below, fmt = "chain0.raw", "raw"
  for level = 1, 3 do
    local name = ("chain%d.qcow2"):format(level)
    sh(("qemu-img create -q -f qcow2 -b %s -F %s %s"):format(below, fmt, q(path(name))))
    local cmds = {}
    for i = level, mib - 1, 16 do
      cmds[#cmds + 1] = ("-c 'write -P %d %dM 1M'"):format(level * 40 + i % 7, i)
    end
    for first = 1, #cmds, 200 do
      sh(("qemu-io %s %s >/dev/null"):format(table.concat(cmds, " ", first,
         math.min(first + 199, #cmds)), q(path(name))))
    end
    below, fmt = name, "qcow2"
  end
end

local function make_sparse(file)
  sh(("qemu-img create -q -f qcow2 %s 1T"):format(q(file)))
  local cmds = {}
  for k = 0, 1799 do cmds[#cmds + 1] = ("-c 'write -P %d %dM 4k'"):format(k % 250 + 1, k * 512) end
  for first = 1, #cmds, 300 do
    sh(("qemu-io %s %s >/dev/null"):format(table.concat(cmds, " ", first,
       math.min(first + 299, #cmds)), q(file)))
  end
end

local steps = {
  { "mixed.raw", function(f) make_mixed(f) end },
  { "mixed.qcow2", function(f) sh(("qemu-img convert -O qcow2 %s %s"):format(q(path("mixed.raw")), q(f))) end },
  { "mixed-zlib.qcow2", function(f)
    sh(("qemu-img convert -c -O qcow2 %s %s"):format(q(path("mixed.raw")), q(f))) end },
  { "mixed-zstd.qcow2", function(f)
    sh(("qemu-img convert -c -O qcow2 -o compression_type=zstd %s %s")
       :format(q(path("mixed.raw")), q(f))) end },
  { "chain3.qcow2", function() make_chain() end },
  { "sparse.qcow2", function(f) make_sparse(f) end },
}
for _, s in ipairs(steps) do
  local f = path(s[1])
  if not exists(f) then
    io.stderr:write("making ", f, "\n")
    s[2](f)
  end
end
