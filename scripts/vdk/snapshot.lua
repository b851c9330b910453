-- vdk.snapshot: internal snapshots as qemu-img shows them, shared by
-- `vdk snapshot -l`, `vdk info` and `vdk convert --keep-snapshots`.
--
--   local S = require "vdk.snapshot"
--   io.write(S.table_text(img:snapshots()))   -- qemu-img snapshot -l's table
--   local list = S.json_list(img:snapshots()) -- qemu-img info's "snapshots"
--   local snap = S.find(list, "name-or-id")   -- an ID first, then a name
--
-- The snapshot list itself comes from img:snapshots() (bindings/lsnapshot.c):
-- tables with id, name, vm_state_size, disk_size, date_sec, date_nsec,
-- vm_clock_nsec and icount (absent when the snapshot has none).
local size = require "vdk.size"

local S = {}

-- The guest clock "HHHH:MM:SS.mmm" as qemu prints it.
function S.clock(nsec)
  local secs = nsec // 1000000000
  return ("%02d:%02d:%02d.%03d"):format(secs // 3600, (secs // 60) % 60, secs % 60,
                                         (nsec // 1000000) % 1000)
end

-- One line of qemu-img snapshot -l (without the newline).
function S.line(s)
  return ("%-9s %-16s %8s%20s%13s%11s"):format(s.id, s.name, size.human(s.vm_state_size),
    os.date("%Y-%m-%d %H:%M:%S", s.date_sec), S.clock(s.vm_clock_nsec),
    s.icount and ("%d"):format(s.icount) or "")
end

S.HEADER = ("%-10s%-17s%8s%20s%13s%11s"):format("ID", "TAG", "VM SIZE", "DATE", "VM CLOCK",
                                                 "ICOUNT")

-- The whole "Snapshot list:" block, or "" when there is no snapshot.
function S.table_text(list)
  if #list == 0 then return "" end
  local out = { "Snapshot list:", S.HEADER }
  for _, s in ipairs(list) do out[#out + 1] = S.line(s) end
  return table.concat(out, "\n") .. "\n"
end

-- qemu-img info --output=json's "snapshots" array.
function S.json_list(list)
  local out = {}
  for i, s in ipairs(list) do
    out[i] = {
      id = s.id, name = s.name, ["vm-state-size"] = s.vm_state_size,
      ["date-sec"] = s.date_sec, ["date-nsec"] = s.date_nsec,
      ["vm-clock-sec"] = s.vm_clock_nsec // 1000000000,
      ["vm-clock-nsec"] = s.vm_clock_nsec % 1000000000,
      icount = s.icount,
    }
  end
  return require("vdk.json").array(out)
end

-- The list of a JSON-form "snapshots" array (as in img:snapshots()).
local function from_json(list)
  local out = {}
  for i, j in ipairs(list) do
    out[i] = { id = j.id, name = j.name, vm_state_size = j["vm-state-size"],
               date_sec = j["date-sec"], date_nsec = j["date-nsec"],
               vm_clock_nsec = j["vm-clock-sec"] * 1000000000 + j["vm-clock-nsec"],
               icount = j.icount }
  end
  return out
end

-- qemu-img info's human "Snapshot list:" block for an info table's
-- "snapshots" field, without the last newline ("" when there is none).
function S.info_text(json_list)
  return (S.table_text(from_json(json_list)):gsub("\n$", ""))
end

-- Add "snapshots" to the info table(s) of img (a list with chain), as
-- qemu-img info does for images that have snapshots. Returns true or nil, msg.
function S.add_to_info(img, t, chain)
  local layers = chain and t or { t }
  local layer = img
  for _, info in ipairs(layers) do
    if not layer then break end
    local list, msg = layer:snapshots()
    if not list then return nil, msg end
    if #list > 0 then info.snapshots = S.json_list(list) end
    layer = layer.backing
  end
  return true
end

-- The snapshot that ref selects in list: a string is an ID, else a name (as
-- qemu-img snapshot -a); {id = ...} or {name = ...} match exactly.
function S.find(list, ref)
  if type(ref) == "table" then
    for _, s in ipairs(list) do
      if (ref.id and s.id == ref.id) or (ref.name and s.name == ref.name) then return s end
    end
    return nil
  end
  for _, s in ipairs(list) do if s.id == ref then return s end end
  for _, s in ipairs(list) do if s.name == ref then return s end end
  return nil
end

-- qemu-img convert -l's parameter: "NAME_OR_ID", "snapshot.name=N",
-- "snapshot.id=I", or both separated by a comma. Returns a ref for S.find,
-- or nil, message.
function S.parse_param(text)
  if not text:find("snapshot%.") then return text end
  local ref = {}
  for item in text:gmatch("[^,]+") do
    local k, v = item:match("^snapshot%.(%a+)=(.*)$")
    if k == "id" then ref.id = v
    elseif k == "name" then ref.name = v
    else return nil, ("Invalid snapshot parameter '%s'"):format(item) end
  end
  return ref
end

-- S.find for a parsed -l parameter, where both id and name must match.
function S.find_param(list, ref)
  if type(ref) ~= "table" or not (ref.id and ref.name) then return S.find(list, ref) end
  for _, s in ipairs(list) do
    if s.id == ref.id and s.name == ref.name then return s end
  end
end

-- Show snapshot ref (a parsed -l parameter) in the read-only image img,
-- as qemu-img convert -l does. Returns true or nil, message.
function S.load(img, ref)
  local list, msg = img:snapshots()
  if not list then return nil, "Failed to load snapshot: " .. msg end
  local s = S.find_param(list, ref)
  if not s then
    if img.format ~= "qcow2" and #list == 0 then
      return nil, ("Failed to load snapshot: format '%s' has no internal snapshots"):format(img.format)
    end
    return nil, "Failed to load snapshot: Can't find snapshot (no internal snapshot matches)"
  end
  local ok
  ok, msg = img:snapshot_load({ id = s.id })
  if not ok then return nil, "Failed to load snapshot: " .. msg end
  return true
end

return S
