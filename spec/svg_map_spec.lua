-- spec/svg_map_spec.lua: `vdk map --svg` draws what `vdk map` says.
--   * structure: the guest panel's cell rects tile the whole disk in order,
--     each one's kind (and fill colour) is what the map's extents make of its
--     cells; the host panel tiles the file; a 1 TiB image stays small;
--   * rendering: headless Chromium (Debian's chromium) screenshots the SVG
--     and the pixels at the centres of cells have the colours of their kinds
--     (skipped when chromium or lua-zlib is missing).
local U = require "support.util"
local svg = require "vdk.svg"

local cjson = U.cjson()
local MiB = 1024 * 1024

-- The cell rects of an SVG file: list of attribute tables (numbers converted).
local function cells(text)
  local list = {}
  for attrs in text:gmatch('<rect class="cell" ([^>]*)>') do
    local t = {}
    for k, v in attrs:gmatch('([%w%-]+)="([^"]*)"') do t[k] = tonumber(v) or v end
    list[#list + 1] = t
  end
  return list
end

local function panel(list, name)
  local out = {}
  for _, r in ipairs(list) do if r["data-panel"] == name then out[#out + 1] = r end end
  return out
end

-- Per-cell class tallies from `vdk map --output=json`, classified as the
-- picture's legend says (independently of the renderer's code path).
local function expected_kinds(path, cell_bytes, size)
  local code, out, err = U.vdk_cmd("map", "--output=json", path)
  assert(code == 0, err)
  local tallies = {}
  for _, e in ipairs(cjson.decode(out)) do
    local k
    if e.data and not e.offset and e.depth == 0 and e.present then
      k = "compressed" -- data without a place in a file (compressed clusters)
    elseif e.data then
      k = e.depth == 0 and "data" or ("backing" .. math.tointeger(math.min(e.depth, 3)))
    elseif e.zero and e.present then
      k = "zero"
    else
      k = "unallocated"
    end
    local pos, stop = e.start, e.start + e.length
    while pos < stop do
      local c = pos // cell_bytes
      local n = math.min((c + 1) * cell_bytes, stop) - pos
      tallies[c] = tallies[c] or {}
      tallies[c][k] = (tallies[c][k] or 0) + n
      pos = pos + n
    end
  end
  local kinds = {}
  for c = 0, (size + cell_bytes - 1) // cell_bytes - 1 do
    kinds[c] = "unallocated"
    for _, k in ipairs({ "data", "compressed", "backing1", "backing2", "backing3", "zero" }) do
      if tallies[c] and (tallies[c][k] or 0) > 0 then kinds[c] = k break end
    end
  end
  return kinds
end

local dir, top, picture
setup(function()
  dir = U.tmpdir()
  local base, mid = dir .. "/base.raw", dir .. "/mid.qcow2"
  top = dir .. "/top.qcow2"
  -- The chain is shorter than the top image: its last 2 MiB are unallocated.
  U.must("qemu-img create -q -f raw %s 14M && qemu-io -f raw -c 'write -P 1 12M 1M' %s",
    U.q(base), U.q(base))
  U.must("qemu-img create -q -f qcow2 -b base.raw -F raw %s", U.q(mid))
  U.must("qemu-io -c 'write -P 2 8M 2M' %s", U.q(mid))
  U.must("qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 %s 16M", U.q(top))
  U.must("qemu-io -c 'write -P 3 0 3M' -c 'write -c -P 4 4M 1M' -c 'write -z 6M 1M' "
    .. "-c 'write -P 5 15M 64k' %s", U.q(top))
  picture = dir .. "/map.svg"
  local code, out, err = U.vdk_cmd("map", "--svg", picture, top)
  assert(code == 0, out .. err)
end)

describe("vdk map --svg", function()
  it("tiles the guest space with cells whose kinds match vdk map", function()
    local text = U.read_file(picture)
    assert.truthy(text:find("^<svg xmlns=\"http://www.w3.org/2000/svg\""))
    local guest = panel(cells(text), "guest")
    local cell_bytes = 65536 -- 16 MiB in 256 cells: one cluster each
    local kinds = expected_kinds(top, cell_bytes, 16 * MiB)
    local pos, seen = 0, {}
    for _, r in ipairs(guest) do
      assert.equal(pos, r["data-start"])
      assert.equal(svg.COLORS[r["data-kind"]], r.fill)
      assert.equal(0, r["data-length"] % cell_bytes)
      for c = pos // cell_bytes, (pos + r["data-length"]) // cell_bytes - 1 do
        assert.equal(kinds[c], r["data-kind"], ("cell %d (guest 0x%x)"):format(c, c * cell_bytes))
      end
      seen[r["data-kind"]] = true
      pos = pos + r["data-length"]
    end
    assert.equal(16 * MiB, pos)
    for _, k in ipairs({ "data", "compressed", "zero", "backing1", "backing2", "unallocated" }) do
      assert.truthy(seen[k], k .. " is not drawn")
    end
    -- The host panel tiles the top image's file.
    local host = panel(cells(text), "host")
    local hpos = 0
    for _, r in ipairs(host) do
      assert.equal(hpos, r["data-start"])
      hpos = hpos + r["data-length"]
    end
    local size = tonumber(U.must("stat -c %%s %s", U.q(top)))
    assert.equal(size, hpos)
  end)

  it("stays small for a 1 TiB image", function()
    local big = dir .. "/big.qcow2"
    U.must("qemu-img create -q -f qcow2 %s 1T", U.q(big))
    U.must("qemu-io -c 'write 0 1M' -c 'write -z 100G 1G' -c 'write 700G 64k' %s", U.q(big))
    local out = dir .. "/big.svg"
    local code, _, err = U.vdk_cmd("map", "--svg", out, big)
    assert.equal(0, code, err)
    local text = U.read_file(out)
    assert.truthy(#text < 400 * 1024, #text)
    local guest = panel(cells(text), "guest")
    assert.truthy(#guest <= 64 * 128)
    local last = guest[#guest]
    assert.equal(1 << 40, last["data-start"] + last["data-length"])
    local kinds = {}
    for _, r in ipairs(guest) do kinds[r["data-kind"]] = (kinds[r["data-kind"]] or 0) + 1 end
    assert.equal(2, kinds.data) -- the first cell and the one at 700G
    assert.truthy(kinds.zero and kinds.zero >= 1)
  end)

  it("renders in headless Chromium with the colours vdk map says", function()
    local browser
    for _, name in ipairs({ "chromium", "chromium-browser" }) do
      if U.run("command -v %s", name) then browser = name break end
    end
    if not browser then
      pending("chromium is not installed")
      return
    end
    local text = U.read_file(picture)
    local width, height = text:match('<svg[^>]* width="(%d+)" height="(%d+)"')
    local profile = U.tmpdir()
    local shot = dir .. "/map.png"
    local ok, out = U.run("timeout 120 %s --headless --no-sandbox --disable-gpu --disable-quic "
      .. "--no-first-run --disable-background-networking --disable-component-update "
      .. "--disable-sync --hide-scrollbars --force-device-scale-factor=1 --user-data-dir=%s "
      .. "--window-size=%s,%s --screenshot=%s %s", browser, U.q(profile), width, height,
      U.q(shot), U.q("file://" .. picture))
    assert(ok, out)
    local png = require "support.png"
    local pic, msg = png.read(shot)
    if not pic and msg:find("lua-zlib", 1, true) then
      pending(msg)
      return
    end
    assert(pic, msg)
    local checked = {}
    for _, r in ipairs(panel(cells(text), "guest")) do
      local k = r["data-kind"]
      if not checked[k] then
        local want = r.fill
        local x, y = r.x + r.width // 2, r.y + r.height // 2
        local red, green, blue = pic:pixel(x, y)
        local wr, wg, wb = tonumber(want:sub(2, 3), 16), tonumber(want:sub(4, 5), 16),
          tonumber(want:sub(6, 7), 16)
        assert.truthy(math.abs(red - wr) <= 6 and math.abs(green - wg) <= 6
          and math.abs(blue - wb) <= 6,
          ("%s at (%d,%d): got #%02x%02x%02x, want %s"):format(k, x, y, red, green, blue, want))
        checked[k] = true
      end
    end
    for _, k in ipairs({ "data", "compressed", "zero", "backing1", "backing2", "unallocated" }) do
      assert.truthy(checked[k], k)
    end
  end)
end)
