-- automation.lua: a Lua automation script embedding the vdk module. For
-- every qcow2 image given, it reports the allocation and qemu-img check's
-- cluster figures, and rewrites the images whose data is fragmented into a
-- fresh, sequential copy NAME.defrag.qcow2 (the original is left alone),
-- verified with vdk.compare.
--
--   lua5.4 automation.lua IMAGE...          (module on LUA_PATH/LUA_CPATH,
--   vdk run automation.lua IMAGE...          or through the vdk command)
--
-- Without arguments it makes a fragmented demo image in /tmp and removes
-- everything it made at the end.
local vdk = require "vdk"

local LIMIT = 0.10 -- rewrite when more than 10 % of the clusters are fragmented

local images, demo = { ... }, nil
if #images == 0 then
  demo = os.tmpname()
  local img = assert(vdk.create(demo, { format = "qcow2", size = "16M" }))
  -- Writes in reverse guest order leave the clusters out of order on the host.
  for i = 15, 0, -1 do assert(img:write(i * 1048576, ("d"):rep(65536))) end
  assert(img:close())
  images = { demo }
end

local status = 0
for _, path in ipairs(images) do
  local img, msg = vdk.open(path)
  if not img then
    io.stderr:write(msg, "\n")
    status = 1
    goto next
  end
  do
    local st = assert(img:stats())
    local a = assert(img:allocation())
    local frag = st.allocated_clusters > 0 and st.fragmented_clusters / st.allocated_clusters or 0
    print(("%s: %s data, %d/%d clusters allocated, %.0f%% fragmented"):format(path,
      vdk.size_to_str(a.seen.data), st.allocated_clusters, st.total_clusters, 100 * frag))
    if frag > LIMIT then
      local out = path:gsub("%.qcow2$", "") .. ".defrag.qcow2"
      local dst = assert(vdk.create(out, { format = "qcow2", size = img.size }))
      assert(vdk.copy{ source = img, target = dst, fresh_target = true }:wait())
      local verdict = vdk.compare(img, dst):wait()
      local after = assert(dst:stats())
      print(("  rewrote it as %s: %s, %d fragmented clusters"):format(out, verdict,
        after.fragmented_clusters))
      if verdict ~= "equal" then status = 1 end
      dst:close()
      if demo then os.remove(out) end
    end
    img:close()
  end
  ::next::
end
if demo then os.remove(demo) end
os.exit(status)
