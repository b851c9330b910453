-- vdk.svg: a picture of an image's allocation map (vdk map --svg, and
-- img:map_svg(path) in the module and the shell).
--
--   svg.render(img [, opts]) -> svg_text, summary
--   svg.write(img, path [, opts]) -> summary | nil, msg, code
--   img:map_svg(path [, opts]) -> summary | nil, msg, code
--
-- Left: the guest address space, one cell per fixed number of bytes, laid
-- out in rows, each cell coloured by what most of its bytes are: data of
-- the image itself, data of backing layer N, compressed data, zero, or
-- unallocated (no layer defines it). Right: the image's own host file, one
-- cell per fixed number of bytes: metadata, free space, or data coloured by
-- the guest offset it holds (a sequentially laid-out image shows a smooth
-- gradient; a fragmented one shows a jumble).
--
-- The number of cells is bounded (opts.columns x opts.max_rows, 64 x 128 by
-- default), so the picture stays small for any size (a 1 TiB image has
-- 128 MiB cells); runs of cells of one colour in a row are one <rect>.
-- Every cell rect carries data-kind, data-start and data-length (its guest
-- or host byte range), and summary lists the geometry and the bytes per
-- kind, so tests can check the picture against `vdk map`.
local size = require "vdk.size"

local svg = {}

svg.COLORS = {
  data = "#2e7d32",        -- data of the image itself (depth 0)
  backing1 = "#1565c0",    -- data of backing layer 1
  backing2 = "#6a1b9a",    -- layer 2
  backing3 = "#00838f",    -- layer 3 and deeper
  compressed = "#f9a825",
  zero = "#81d4fa",
  unallocated = "#e0e0e0",
  metadata = "#424242",
  free = "#ffffff",
}

local LABELS = {
  data = "data (this image)", backing1 = "data of backing layer 1",
  backing2 = "data of backing layer 2", backing3 = "data of deeper layers",
  compressed = "compressed", zero = "zero", unallocated = "unallocated",
  metadata = "metadata", free = "unused",
}

-- Which class an extent of vdk map belongs to.
function svg.class_of(e)
  if e.compressed then return "compressed" end
  if e.data then
    if e.depth == 0 then return "data" end
    return "backing" .. math.min(e.depth, 3)
  end
  if e.zero and e.present then return "zero" end
  return "unallocated"
end

-- Cell geometry for `total` bytes: a cell is a multiple of `unit` bytes.
function svg.geometry(total, unit, columns, max_rows)
  unit = math.max(unit, 1)
  local units = math.max(1, (total + unit - 1) // unit)
  local per_cell = math.max(1, (units + columns * max_rows - 1) // (columns * max_rows))
  local cell_bytes = per_cell * unit
  local cells = math.max(1, (total + cell_bytes - 1) // cell_bytes)
  return { cell_bytes = cell_bytes, cells = cells, columns = columns,
           rows = (cells + columns - 1) // columns, total = total }
end

-- Add len bytes of class k from byte offset start to the per-cell tallies.
local function tally(cells, geo, start, len, k, weight_fn)
  local cb = geo.cell_bytes
  local pos, stop = start, math.min(start + len, geo.total)
  while pos < stop do
    local c = pos // cb
    local cell_end = math.min((c + 1) * cb, stop)
    local t = cells[c + 1]
    if not t then t = {}; cells[c + 1] = t end
    t[k] = (t[k] or 0) + (cell_end - pos)
    if weight_fn then weight_fn(t, pos, cell_end - pos) end
    pos = cell_end
  end
end

-- Guest cells show the most telling kind present in them (so that a few
-- clusters of data stay visible in a cell of 128 MiB); host cells show data
-- or metadata, whichever has more bytes, and are unused only when empty.
svg.PRIORITY = { "data", "compressed", "backing1", "backing2", "backing3", "zero",
                 "unallocated" }

function svg.guest_kind(t)
  if t then
    for _, k in ipairs(svg.PRIORITY) do
      if (t[k] or 0) > 0 then return k end
    end
  end
  return "unallocated"
end

function svg.host_kind(t)
  local d, m = t and t.data or 0, t and t.metadata or 0
  if d == 0 and m == 0 then return "free" end
  return d >= m and "data" or "metadata"
end

-- Colour of host data from the guest offset it holds: hue 0..280.
local function gradient(frac)
  local h = math.floor(280 * math.max(0, math.min(1, frac)))
  return ("hsl(%d,75%%,45%%)"):format(h)
end

local function esc(s)
  return (tostring(s):gsub("[&<>\"]", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;",
                                          ['"'] = "&quot;" }))
end

-- Rects of one panel: runs of equal colour within a row merged.
local function panel_rects(out, panel, geo, x0, y0, cell_px, color_of, kind_of)
  for row = 0, geo.rows - 1 do
    local col = 0
    while col < geo.columns do
      local c = row * geo.columns + col
      if c >= geo.cells then break end
      local color, kind = color_of(c), kind_of(c)
      local n = 1
      while col + n < geo.columns and c + n < geo.cells and color_of(c + n) == color
          and kind_of(c + n) == kind do
        n = n + 1
      end
      local start = c * geo.cell_bytes
      local length = math.min(n * geo.cell_bytes, geo.total - start)
      out[#out + 1] = ('<rect class="cell" x="%d" y="%d" width="%d" height="%d" fill="%s" '
        .. 'data-panel="%s" data-kind="%s" data-start="%d" data-length="%d"><title>%s '
        .. '0x%x..0x%x</title></rect>')
        :format(x0 + col * cell_px, y0 + row * cell_px, n * cell_px, cell_px, color, panel, kind,
          start, length, esc(LABELS[kind] or kind), start, start + length)
      col = col + n
    end
  end
end

local function text(out, x, y, s, opts)
  out[#out + 1] = ('<text x="%d" y="%d"%s>%s</text>'):format(x, y,
    opts and (" " .. opts) or "", esc(s))
end

-- Row labels: the offset at the start of every 16th row.
local function row_labels(out, geo, x, y0, cell_px)
  for row = 0, geo.rows - 1, 16 do
    text(out, x, y0 + row * cell_px + cell_px, ("0x%x"):format(row * geo.columns * geo.cell_bytes),
      'text-anchor="end" font-size="9"')
  end
end

-- Collect the guest map and the host layout of img.
local function collect(img, geo, hgeo, opts)
  local gcells, hcells = {}, {}
  local sum = { guest = {}, host = {}, extents = 0, host_runs = 0 }
  local prev_host_end
  for e in img:map() do
    local k = svg.class_of(e)
    sum.guest[k] = (sum.guest[k] or 0) + e.length
    sum.extents = sum.extents + 1
    tally(gcells, geo, e.start, e.length, k)
    if hgeo and e.depth == 0 and e.offset and e.data then
      if e.offset ~= prev_host_end then sum.host_runs = sum.host_runs + 1 end
      prev_host_end = e.offset + e.length
      local gstart = e.start
      tally(hcells, hgeo, e.offset, e.length, "data", function(t, pos, len)
        local g = gstart + (pos - e.offset)
        t.gsum = (t.gsum or 0) + (g / geo.total) * len
      end)
      sum.host.data = (sum.host.data or 0) + e.length
    end
  end
  if hgeo then
    local lay = img:layout()
    for _, s in ipairs(lay and lay.structures or {}) do
      tally(hcells, hgeo, s.offset, s.length, "metadata")
      sum.host.metadata = (sum.host.metadata or 0) + s.length
    end
  end
  return gcells, hcells, sum
end

function svg.render(img, opts)
  opts = opts or {}
  local columns, max_rows, cell_px = opts.columns or 64, opts.max_rows or 128, opts.cell or 8
  local unit = img.cluster_size > 0 and img.cluster_size or 65536
  local geo = svg.geometry(img.size, unit, columns, max_rows)
  local fsize = img.file_size and img:file_size()
  local hgeo = fsize and fsize > 0 and svg.geometry(fsize, unit, columns, max_rows) or nil
  local gcells, hcells, sum = collect(img, geo, hgeo, opts)

  local margin, top = 100, 130
  local gx, hx = margin, margin + columns * cell_px + 90
  local width = hx + columns * cell_px + 20
  local height = top + math.max(geo.rows, hgeo and hgeo.rows or 0) * cell_px + 30
  local out = {
    ('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
      .. 'font-family="sans-serif" font-size="11" shape-rendering="crispEdges">'):format(width,
      height, width, height),
    ('<rect x="0" y="0" width="%d" height="%d" fill="#fafafa"/>'):format(width, height),
  }
  text(out, 10, 18, ("%s (%s, %s virtual)"):format(img.filename, img.format,
    size.human(img.size)), 'font-size="14" font-weight="bold"')
  -- Legend, in rows that fit the width.
  local lx, ly = 10, 30
  for _, k in ipairs({ "data", "backing1", "backing2", "backing3", "compressed", "zero",
                       "unallocated", "metadata" }) do
    local bytes = k == "metadata" and sum.host.metadata or sum.guest[k]
    local label = ("%s: %s"):format(LABELS[k], bytes and size.human(bytes) or "0 B")
    local w = 16 + #label * 6 + 14
    if lx + w > width - 10 then lx, ly = 10, ly + 18 end
    out[#out + 1] = ('<rect class="legend" x="%d" y="%d" width="12" height="12" fill="%s" '
      .. 'stroke="#000" stroke-width="0.5" data-kind="%s"/>'):format(lx, ly, svg.COLORS[k], k)
    text(out, lx + 16, ly + 10, label)
    lx = lx + w
  end
  text(out, 10, 82, ("guest: %d cells of %s, %d extents"):format(geo.cells,
    size.human(geo.cell_bytes), sum.extents))
  if hgeo then
    text(out, hx, 82, ("host file: %s, cells of %s; data in %d host-contiguous runs "
      .. "(colour = guest offset)"):format(size.human(fsize), size.human(hgeo.cell_bytes),
      sum.host_runs))
  end
  text(out, gx, top - 8, "guest address space", 'font-weight="bold"')
  row_labels(out, geo, gx - 4, top, cell_px)
  panel_rects(out, "guest", geo, gx, top, cell_px,
    function(c) return svg.COLORS[svg.guest_kind(gcells[c + 1])] end,
    function(c) return svg.guest_kind(gcells[c + 1]) end)
  if hgeo then
    text(out, hx, top - 8, "host file (this layer)", 'font-weight="bold"')
    row_labels(out, hgeo, hx - 4, top, cell_px)
    local function kind(c) return svg.host_kind(hcells[c + 1]) end
    panel_rects(out, "host", hgeo, hx, top, cell_px, function(c)
      local k = kind(c)
      if k == "data" then
        local t = hcells[c + 1]
        return gradient(t.gsum / t.data)
      end
      return svg.COLORS[k]
    end, kind)
  end
  out[#out + 1] = "</svg>"
  sum.geometry, sum.host_geometry, sum.cell_px = geo, hgeo, cell_px
  sum.origin = { guest = { x = gx, y = top }, host = hgeo and { x = hx, y = top } or nil }
  return table.concat(out, "\n") .. "\n", sum
end

function svg.write(img, path, opts)
  local ok, text_or_err, sum = pcall(svg.render, img, opts)
  if not ok then return nil, tostring(text_or_err), "EIO" end
  local f, msg, code = io.open(path, "w")
  if not f then return nil, msg, code end
  f:write(text_or_err)
  f:close()
  return sum
end

-- img:map_svg(path [, opts])
require("vdk.core").image_methods.map_svg = function(img, path, opts)
  if type(path) ~= "string" then error("map_svg: path must be a string", 2) end
  return svg.write(img, path, opts)
end

return svg
