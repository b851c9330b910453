-- vdk.check: the check and repair pipeline, as steps a script can reuse.
--
--   local check = require "vdk.check"
--   local img = assert(check.open("disk.qcow2", { repair = true }))
--   local rep = check.run(img, { repair = "all", dry_run = true })  -- the plan
--   io.stderr:write(check.problems_text(rep))
--   io.stdout:write(check.plan_text(rep))
--   local first, second = check.repair(img, "all")   -- repair, then check again
--   io.stdout:write(check.repaired_text(first), check.human(second))
--   os.exit(check.exit_code(second))
--
-- Over img:check{} (bindings/lcheck.c), whose C side (vdk_image_check)
-- makes the whole plan before it writes and orders its writes so that a
-- crash during a repair leaves the image no worse. The texts and numbers
-- are qemu-img check's (7.2): its summary lines, its JSON fields and exit
-- codes (0 clean, 1 the check could not complete, 2 corruptions, 3 leaked
-- clusters only).
local vdk = require "vdk"
local json = require "vdk.json"

local check = {}

-- Open an image for a check: read-only (or for writing when opts.repair),
-- without its backing chain (a check reads metadata only), tolerating the
-- damage the check reports. opts: format, repair, force_share.
function check.open(filename, opts)
  opts = opts or {}
  return vdk.open(filename, {
    format = opts.format,
    readonly = not opts.repair,
    force_share = opts.force_share or false,
    backing = false,
    check = true,
    allow_data_file = true, -- opened, never read: a check reads metadata only
  })
end

-- Run the check (opts.repair = "leaks" | "all", opts.dry_run): the report,
-- or nil, message, code, partial report.
function check.run(img, opts)
  opts = opts or {}
  return img:check({ repair = opts.repair, dry_run = opts.dry_run or nil })
end

-- Repair in mode ("leaks" | "all"), then check again as qemu-img does
-- ("Double checking the fixed image now..."). Returns the repair's report
-- and the second check's, whose *-fixed fields are the repair's; or nil,
-- message, code, partial report.
function check.repair(img, mode)
  local first, msg, code, partial = check.run(img, { repair = mode })
  if not first then return nil, msg, code, partial end
  if first["corruptions-fixed"] == 0 and first["leaks-fixed"] == 0 then
    return first, first
  end
  local second, msg2, code2, partial2 = check.run(img)
  if not second then return nil, msg2, code2, partial2 end
  second["corruptions-fixed"] = first["corruptions-fixed"]
  second["leaks-fixed"] = first["leaks-fixed"]
  return first, second
end

-- ---------------------------------------------------------------- texts

local function pct(a, b) return ("%0.2f"):format(a * 100.0 / b) end

-- qemu-img check's human summary.
function check.human(r)
  local out = {}
  local corrupt, leaks, errors = r.corruptions, r.leaks, r["check-errors"]
  if corrupt == 0 and leaks == 0 and errors == 0 then
    out[#out + 1] = "No errors were found on the image.\n"
  else
    if corrupt > 0 then
      out[#out + 1] = ("\n%d errors were found on the image.\n" ..
        "Data may be corrupted, or further writes to the image may corrupt it.\n"):format(corrupt)
    end
    if leaks > 0 then
      out[#out + 1] = ("\n%d leaked clusters were found on the image.\n" ..
        "This means waste of disk space, but no harm to data.\n"):format(leaks)
    end
    if errors > 0 then
      out[#out + 1] = ("\n%d internal errors have occurred during the check.\n"):format(errors)
    end
  end
  local total, alloc = r["total-clusters"], r["allocated-clusters"]
  if total ~= 0 and alloc ~= 0 then
    out[#out + 1] = ("%d/%d = %s%% allocated, %s%% fragmented, %s%% compressed clusters\n"):format(
      alloc, total, pct(alloc, total), pct(r["fragmented-clusters"], alloc),
      pct(r["compressed-clusters"], alloc))
  end
  if r["image-end-offset"] ~= 0 then
    out[#out + 1] = ("Image end offset: %d\n"):format(r["image-end-offset"])
  end
  return table.concat(out)
end

-- What qemu-img prints before checking a repaired image again.
function check.repaired_text(first)
  return ("The following inconsistencies were found and repaired:\n\n" ..
    "    %d leaked clusters\n    %d corruptions\n\nDouble checking the fixed image now...\n"):format(
    first["leaks-fixed"], first["corruptions-fixed"])
end

local OPTIONAL = {
  "image-end-offset", "corruptions", "leaks", "corruptions-fixed", "leaks-fixed",
  "total-clusters", "allocated-clusters", "fragmented-clusters", "compressed-clusters",
}

-- The JSON object qemu-img check prints (fields that are 0 are left out,
-- except check-errors).
function check.json_table(r)
  local t = { filename = r.filename, format = r.format, ["check-errors"] = r["check-errors"] }
  for _, k in ipairs(OPTIONAL) do
    if r[k] and r[k] ~= 0 then t[k] = r[k] end
  end
  return t
end

function check.json(r)
  return json.encode(check.json_table(r)) .. "\n"
end

-- The problems found, one line each (what qemu-img prints on stderr).
function check.problems_text(r)
  local out = {}
  for _, p in ipairs(r.problems or {}) do out[#out + 1] = p.message .. "\n" end
  if (r.problems_dropped or 0) > 0 then
    out[#out + 1] = ("... and %d more problems not listed\n"):format(r.problems_dropped)
  end
  return table.concat(out)
end

-- A dry run's plan: each problem and what the repair would do about it.
function check.plan_text(r)
  local out = { ("Repair plan (check -r %s), nothing was written:\n"):format(r.mode) }
  local fixed, left = 0, 0
  for _, p in ipairs(r.problems or {}) do
    local what = p.fix == "none" and "left as is" or p.fix
    out[#out + 1] = ("  %-14s %-15s 0x%x  %s\n"):format(what, p.kind, p.offset, p.message)
    if p.fix == "none" then left = left + 1 else fixed = fixed + 1 end
  end
  if (r.problems_dropped or 0) > 0 then
    out[#out + 1] = ("  ... and %d more problems not listed\n"):format(r.problems_dropped)
  end
  if r.rebuild and r.mode == "all" then
    out[#out + 1] = "The refcount structure would be rebuilt from the references.\n"
  end
  out[#out + 1] = ("%d problems would be repaired, %d left as they are.\n"):format(fixed, left)
  return table.concat(out)
end

-- qemu-img check's exit status for a completed check.
function check.exit_code(r)
  if r["check-errors"] > 0 then return 1 end
  if r.corruptions > 0 then return 2 end
  if r.leaks > 0 then return 3 end
  return 0
end

return check
