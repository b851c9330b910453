-- vdk check: qemu-img check, with a dry run of the repair.
--
-- The steps are vdk.check's: open (read-only, or for writing with -r),
-- check or repair (a repair is followed by a second check, as qemu-img
-- does), print the problems on stderr and the summary on stdout, exit with
-- qemu-img check's status.
local cli = require "vdk.cli"
local check = require "vdk.check"

local cmd = {
  name = "check",
  summary = "check an image for errors, or repair it",
  usage = "check [-f fmt] [-r leaks|all] [--output=human|json] [-U] [-q] [--dry-run] filename",
  help = [[
  -f, --format=FMT    the image format (default: probe it)
  -r, --repair=WHAT   repair what the check finds: "leaks" frees leaked
                      clusters; "all" also fixes refcounts, COPIED flags and
                      bad entries, and rebuilds a damaged refcount structure
  --dry-run           print the repair plan (-r, default all) and write
                      nothing
  --output=FMT        human (default) or json, as qemu-img check prints them
  -U, --force-share   check an image another process has open for writing
                      (the result may be inconsistent; not with -r)
  -q, --quiet         print nothing on stdout
  -h, --help          show this help

A repair writes nothing before its whole plan is known, and orders its
writes so that a crash during the repair leaves the image no worse than it
was. Only metadata is read, never guest data.

Exit status: 0 no problems, 1 the check could not complete (or usage
error), 2 corruptions, 3 leaked clusters only, 63 the format has no
check. With -r, the status is the second check's (after the repair).
]],
  options = {
    { short = "f", long = "format", value = true },
    { short = "r", long = "repair", value = true },
    { long = "output", value = true },
    { long = "dry-run" },
    { short = "U", long = "force-share" },
    { short = "q", long = "quiet" },
  },
}

local function out(opts, text)
  if not opts.quiet then io.stdout:write(text) end
end

-- A check that could not complete: what it found, then the reason (as
-- qemu-img, no summary). A format without checks exits with 63, as
-- qemu-img does.
local function failed(rep, msg, code)
  if code == "UNSUPPORTED" then
    cli.fail("%s", (msg:gsub("^.-: This image", "This image")))
    return 63
  end
  if rep and rep.problems then io.stderr:write(check.problems_text(rep)) end
  return cli.fail("Check failed: %s", msg)
end

local function print_result(opts, output, rep)
  if output == "json" then out(opts, check.json(rep)) else out(opts, check.human(rep)) end
  if rep["check-errors"] > 0 then
    cli.fail("Check failed")
    return 1
  end
  return check.exit_code(rep)
end

local function validate(opts, operands)
  local output = opts.output or "human"
  if output ~= "human" and output ~= "json" then
    return nil, cli.fail("--output must be used with human or json as argument.")
  end
  local repair = opts.repair
  if repair and repair ~= "leaks" and repair ~= "all" then
    return nil, cli.fail("Unknown option value for -r (expecting 'leaks' or 'all'): %s", repair)
  end
  if #operands ~= 1 then
    return nil, cli.usage_error("check", "Expecting one image file name")
  end
  if opts["force-share"] and repair and not opts["dry-run"] then
    return nil, cli.fail("--force-share cannot be used with -r (a repair writes)")
  end
  return output
end

function cmd.run(opts, operands)
  local output, status = validate(opts, operands)
  if not output then return status end
  local filename, dry = operands[1], opts["dry-run"]
  local repair = opts.repair or (dry and "all") or nil
  local img, msg = check.open(filename, {
    format = opts.format, repair = repair and not dry, force_share = opts["force-share"],
  })
  if not img then return cli.fail_file(filename, msg) end
  local rep, second, code
  if dry then
    rep, msg, code, second = check.run(img, { repair = repair, dry_run = true })
    if not rep then img:close(); return failed(second, msg, code) end
    io.stderr:write(check.problems_text(rep))
    if output == "human" then out(opts, check.plan_text(rep)) end
    img:close()
    return print_result(opts, output, rep)
  elseif repair then
    local partial
    rep, second, code, partial = check.repair(img, repair)
    if not rep then img:close(); return failed(partial, second, code) end
    io.stderr:write(check.problems_text(rep))
    if rep ~= second then
      if output == "human" then out(opts, check.repaired_text(rep)) end
      io.stderr:write(check.problems_text(second))
    end
  else
    rep, msg, code, second = check.run(img)
    if not rep then img:close(); return failed(second, msg, code) end
    io.stderr:write(check.problems_text(rep))
    second = rep
  end
  local ok, cmsg = img:close()
  if not ok and cmsg then return cli.fail_file(filename, cmsg) end
  return print_result(opts, output, second)
end

return cmd
