-- vdk run SCRIPT [ARGS]: run a Lua script, exactly as `lua5.4 SCRIPT ARGS`
-- would, with the vdk module at hand (`require "vdk"`).
--
-- The script sees the global `arg` (arg[0] = SCRIPT, arg[1..n] = ARGS,
-- arg[-1] = "run", arg[-2] = the vdk program) and receives ARGS as `...`.
-- SCRIPT "-" reads the script from standard input. The script's return
-- value is ignored (exit status 0). os.exit works as usual, except that it
-- closes the Lua state unless told os.exit(status, false): open images are
-- then flushed and closed, not left with unwritten metadata. An error prints
-- "vdk: <message>" on stderr, with a traceback when VDK_DEBUG is set, and
-- the status is 1.
local cli = require "vdk.cli"

-- Turn an error value into its text, with a traceback under VDK_DEBUG.
local function handler(err)
  local msg = err
  if type(err) ~= "string" then
    local mt = getmetatable(err)
    if mt and mt.__tostring then
      msg = tostring(err)
    else
      msg = ("(error object is a %s value)"):format(type(err))
    end
  end
  local debug_env = os.getenv("VDK_DEBUG")
  if debug_env and debug_env ~= "" then
    return debug.traceback(msg, 2)
  end
  return msg
end

-- busted --lua="vdk run" re-executes itself as
--   vdk run /usr/bin/busted --ignore-lua --lua=vdk run <its arguments>
-- through the shell, which splits "--lua=vdk run" at the space. Join the
-- stray "run" back onto the --lua value so busted sees its own arguments.
local function rejoin_busted_lua(args)
  local ignoring = false
  for _, a in ipairs(args) do
    if a == "--ignore-lua" then ignoring = true end
  end
  if not ignoring then return end
  local function is_vdk(path) return path and path:match("vdk$") ~= nil end
  for i = 1, #args do
    if args[i]:match("^%-%-lua=") and is_vdk(args[i]) and args[i + 1] == "run" then
      args[i] = args[i] .. " run"
      table.remove(args, i + 1)
      return
    elseif args[i] == "--lua" and is_vdk(args[i + 1]) and args[i + 2] == "run" then
      args[i + 1] = args[i + 1] .. " run"
      table.remove(args, i + 2)
      return
    end
  end
end

return {
  name = "run",
  summary = "run a Lua script with the vdk module",
  usage = "run SCRIPT.lua [ARGS...]",
  help = [[
Runs SCRIPT as lua5.4 would: the global 'arg' holds the arguments
(arg[0] is SCRIPT), and the script receives them as '...'. 'require "vdk"'
loads the vdk module. SCRIPT '-' reads the script from standard input.
Exit status: 0, or 1 when the script raises an error (printed as
'vdk: <message>'; set VDK_DEBUG=1 for a traceback), or what the script
passes to os.exit.
]],
  raw_args = true,
  run = function(_, operands, args)
    local script = operands[1]
    if script == nil then
      return cli.usage_error("run", "Expecting a script file name")
    end
    if (script == "-h" or script == "--help") and #operands == 1 then
      io.stdout:write(cli.command_help(require "vdk.commands.run"))
      return 0
    end
    local chunk, err = loadfile(script ~= "-" and script or nil)
    if not chunk then return cli.fail("%s", err) end
    local script_args = { [-2] = args[0], [-1] = "run", [0] = script }
    table.move(operands, 2, #operands, 1, script_args)
    rejoin_busted_lua(script_args)
    _G.arg = script_args
    local exit = os.exit
    os.exit = function(status, close)
      if close == nil then close = true end
      return exit(status, close)
    end
    local ok, msg = xpcall(chunk, handler, table.unpack(script_args, 1, #script_args))
    if not ok then return cli.fail("%s", msg) end
    return 0
  end,
}
