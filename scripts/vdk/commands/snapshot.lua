-- vdk snapshot: list, create, apply and delete internal snapshots, as
-- qemu-img snapshot does (same options, output and exit codes), plus VM
-- states: --vmstate-in FILE with -c saves FILE as the new snapshot's VM
-- state (through the pipeline in scripts/vdk/savevm.lua), --vmstate-out
-- FILE -s SNAPSHOT writes a snapshot's VM state to FILE.
--
-- Read top to bottom: check the options, open the image (read-only to list
-- or export, read-write otherwise), do the one action, report.
local vdk = require "vdk.core" -- (not "vdk": a command that starts fast)
local cli = require "vdk.cli"
local S = require "vdk.snapshot"
local human = require("vdk.size").human

local CACHE_MODES = { writeback = true, writethrough = true, none = true, directsync = true,
                      unsafe = true }

local snapshot = {
  name = "snapshot",
  summary = "list, create, apply or delete internal snapshots (and their VM states)",
  usage = "snapshot [-f fmt] [-U] [-q] [-p] [-l | -a snapshot | -c snapshot [--vmstate-in FILE] "
    .. "| -d snapshot | --vmstate-out FILE -s snapshot] filename",
  help = [[
  -l                  list the snapshots (the default action)
  -c SNAPSHOT         create a snapshot named SNAPSHOT of the current disk
                      (names are unique: an existing name is an error)
  -a SNAPSHOT         apply (revert to) the snapshot with ID or name SNAPSHOT
  -d SNAPSHOT         delete the snapshot named SNAPSHOT
  --vmstate-in FILE   with -c: store FILE (a VM state, e.g. QEMU's migration
                      stream) as the new snapshot's VM state, where QEMU's
                      loadvm finds it; '-' reads standard input
  --vmstate-out FILE  write the VM state of the snapshot given with -s to
                      FILE ('-' for standard output)
  -s SNAPSHOT         with --vmstate-out: the snapshot (ID or name)
  -t CACHE            cache mode for writing (writeback, none, ...); with
                      --vmstate-in, none writes the state with O_DIRECT
  -f FMT              the image format (default: probe it)
  -U, --force-share   open the image even if another process uses it (-l
                      and --vmstate-out only)
  -q                  quiet
  -p                  show progress while a VM state is written or read
  -h, --help          show this help

Exit status: 0 on success, 1 on any error (unknown snapshot, duplicate
name, image that cannot be opened, format without snapshots ...).
]],
  options = {
    { short = "l" },
    { short = "c", value = true },
    { short = "a", value = true },
    { short = "d", value = true },
    { short = "s", value = true },
    { short = "f", long = "format", value = true },
    { short = "t", value = true },
    { short = "U", long = "force-share", name = "U" },
    { short = "q" },
    { short = "p" },
    { long = "vmstate-in", value = true },
    { long = "vmstate-out", value = true },
  },
}

-- The action ("list", "create", ...) and its argument, or nil, message.
local function action(opts)
  local chosen = {}
  if opts.l then chosen[#chosen + 1] = "list" end
  if opts.c then chosen[#chosen + 1] = "create" end
  if opts.a then chosen[#chosen + 1] = "apply" end
  if opts.d then chosen[#chosen + 1] = "delete" end
  if opts["vmstate-out"] then chosen[#chosen + 1] = "export" end
  if #chosen > 1 then return nil, "Cannot mix '-l', '-a', '-c', '-d'" end
  local what = chosen[1] or "list"
  if opts["vmstate-in"] and what ~= "create" then return nil, "--vmstate-in needs -c" end
  if what == "export" and not opts.s then return nil, "--vmstate-out needs -s SNAPSHOT" end
  if opts.s and what ~= "export" then return nil, "-s is only used with --vmstate-out" end
  if opts.U and what ~= "list" and what ~= "export" then
    return nil, "-U can only be used to list snapshots or read a VM state"
  end
  return what
end

local function open(filename, opts, writable)
  return vdk.open(filename, { format = opts.format, readonly = not writable,
                              force_share = opts.U or false, cache = opts.t })
end

-- Progress on stderr: "    (45.00/100%)\r" like qemu-img, or bytes when
-- the total is not known.
local function progress_fn(opts, total)
  if not opts.p or opts.q then return nil end
  return function(p)
    local t = p.total or total
    if t and t > 0 then
      io.stderr:write(("    (%3.2f/100%%)\r"):format(100 * p.bytes / t))
    else
      io.stderr:write(("    %s at %s/s\r"):format(human(p.bytes),
        human(math.floor(p.rate))))
    end
    io.stderr:flush()
  end
end

local function file_size(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local n = f:seek("end")
  f:close()
  return n
end

local function create(img, name, opts)
  local state = opts["vmstate-in"]
  if not state then return img:snapshot_create(name) end
  local src = state == "-" and io.stdin or state
  local savevm = require "vdk.savevm" -- loaded only when a VM state is saved
  local ok, msg, code = savevm.save(img, name, src, {
    progress = progress_fn(opts, state ~= "-" and file_size(state) or nil),
  })
  if opts.p and not opts.q then io.stderr:write("\n") end
  return ok, msg, code
end

local function export(img, ref, opts)
  local out = opts["vmstate-out"]
  local savevm = require "vdk.savevm"
  local ok, msg, code = savevm.export(img, ref, out == "-" and io.stdout or out,
                                      { progress = progress_fn(opts) })
  if opts.p and not opts.q then io.stderr:write("\n") end
  return ok, msg, code
end

local VERBS = { create = "create", apply = "apply", delete = "delete", export = "read the VM state of" }

function snapshot.run(opts, operands)
  local what, msg = action(opts)
  if not what then return cli.usage_error("snapshot", msg) end
  if #operands ~= 1 then return cli.usage_error("snapshot", "Expecting one image file name") end
  if opts.t and not CACHE_MODES[opts.t] then return cli.fail("Invalid cache option: " .. opts.t) end
  local filename = operands[1]
  local writable = what == "create" or what == "apply" or what == "delete"
  local img, err = open(filename, opts, writable)
  if not img then return cli.fail("Could not open '%s': %s", filename, err) end
  local name = opts.c or opts.a or opts.d or opts.s
  local ok, code
  if what == "list" then
    local list
    list, err = img:snapshots()
    if list then io.stdout:write(S.table_text(list)) end
    ok = list ~= nil
  elseif what == "create" then
    ok, err, code = create(img, name, opts)
  elseif what == "apply" then
    ok, err, code = img:snapshot_apply(name)
  elseif what == "delete" then
    ok, err, code = img:snapshot_delete({ name = name })
  else
    ok, err, code = export(img, name, opts)
  end
  local closed, cerr = img:close()
  if not ok then
    if what == "list" then return cli.fail_file(filename, err) end
    return cli.fail("Could not %s snapshot '%s': %s", VERBS[what], name, err)
  end
  if not closed then return cli.fail_file(filename, cerr) end
  return 0
end

return snapshot
