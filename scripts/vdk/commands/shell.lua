-- vdk shell: an interactive Lua shell with the vdk module and the images
-- named on the command line (read-only) at hand; also runs chunks (-e) and
-- scripts (operands ending in .lua) in the same environment. The shell
-- itself is scripts/vdk/shell.lua.
local cli = require "vdk.cli"
local shell = require "vdk.shell"

local cmd = {
  name = "shell",
  summary = "inspect images in an interactive Lua shell",
  usage = "shell [-f fmt] [-U] [-e CHUNK]... [-i] [--no-history] [IMAGE...] [SCRIPT.lua [ARGS...]]",
  help = [[
  -f, --format=FMT    the format of the images (default: probe each)
  -U, --force-share   open the images even if another process writes them
  -e, --execute=CHUNK run a Lua chunk and print its results (may be repeated);
                      with -e or a script, no interactive shell unless -i
  -i, --interactive   enter the interactive shell after the chunks and script
  --no-history        do not read or write the history file
  -h, --help          show this help

Images are opened read-only and bound to img (one image) or img1, img2 ...
An operand ending in .lua is a script, run with the images bound; the
operands after it are its arguments (as ... and arg). The shell has line
editing, a history ($VDK_HISTORY, default ~/.vdk_history) and tab
completion of names, fields and methods; help() lists the inspection
helpers (img:header(), img:explain(offset), img:l2(i) ...).

Exit status: 0 on success; 1 when an image cannot be opened, a chunk or
the script fails, or on a usage error; exit(N) in the shell exits N.
]],
  options = {
    { short = "f", long = "format", value = true },
    { short = "U", long = "force-share" },
    { short = "e", long = "execute", value = true, list = true },
    { short = "i", long = "interactive" },
    { long = "no-history" },
  },
}

-- Images, then the script and its arguments.
local function split_operands(operands)
  local images = {}
  for i, op in ipairs(operands) do
    if op:match("%.lua$") then
      return images, op, table.move(operands, i + 1, #operands, 1, {})
    end
    images[#images + 1] = op
  end
  return images
end

local function run_script(env, script, args)
  local f, err = loadfile(script, "t", env)
  if not f then return false, err end
  env.arg = { [0] = script, table.unpack(args) }
  local ok, msg = xpcall(f, debug.traceback, table.unpack(args))
  if not ok then
    local debug_env = os.getenv("VDK_DEBUG")
    if not (debug_env and debug_env ~= "") then msg = tostring(msg):match("^[^\n]*") end
  end
  return ok, msg
end

function cmd.run(opts, operands)
  local images, script, args = split_operands(operands)
  local chunks = opts.execute or {}
  local interactive = opts.interactive or (#chunks == 0 and not script)
  local env, open_images = shell.new_env({
    images = images, format = opts.format, force_share = opts["force-share"] or false,
  })
  if not env then return cli.fail("%s", open_images) end
  local function close_all()
    for _, img in ipairs(open_images) do img:close() end
  end
  for _, chunk in ipairs(chunks) do
    if not shell.run_line(env, chunk) then
      close_all()
      return 1
    end
    if shell.exiting then close_all() return shell.exiting end
  end
  if script then
    local ok, msg = run_script(env, script, args)
    if not ok then
      close_all()
      return cli.fail("%s", msg)
    end
  end
  if not interactive then
    close_all()
    return 0
  end
  -- The interactive shell reuses the environment (and its images).
  local status = shell.start({
    env = env, history = opts["no-history"] and false or nil, banner = true,
  })
  close_all()
  return status
end

return cmd
