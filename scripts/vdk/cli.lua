-- vdk.cli: the `vdk` command's dispatcher.
--
-- The launcher (bindings/launcher.c) calls cli.main(args) with args[0] the
-- program name and args[1..n] its arguments, and exits with the status it
-- returns. Each command is a module vdk.commands.<name> returning a table:
--
--   name     = "info",
--   summary  = "show information about an image",   -- one line for `vdk --help`
--   usage    = "info [-f fmt] ... filename",         -- after "vdk "
--   help     = "...",                                -- option descriptions
--   options  = { getopt definitions },               -- see vdk.getopt
--   raw_args = true,                                 -- optional: no option parsing
--   run      = function(opts, operands, args) ... return status end,
--
-- Commands print their output themselves and report failures through
-- cli.fail / cli.usage_error, which print one "vdk: ..." line on stderr and
-- return the exit status (1), so a command can `return cli.fail(msg)`.
-- To add a command: write scripts/vdk/commands/<name>.lua and add the name
-- to cli.COMMANDS.
local getopt = require "vdk.getopt"

local cli = {}

cli.COMMANDS = { "create", "info", "map", "convert", "snapshot", "compare", "measure", "check",
                 "resize", "run", "help" }

-- The inspection shell (scripts/vdk/commands/shell.lua), listed before "help".
table.insert(cli.COMMANDS, #cli.COMMANDS, "shell")

cli.VERSION_TEXT = "vdk version %s\nA disk image tool (qemu-img compatible) with a Lua engine.\n"

-- The options every command accepts, on top of its own.
local HELP_OPTION = { short = "h", long = "help" }

-- Print "vdk: msg" on stderr; returns 1, the exit status for failures.
function cli.fail(fmt, ...)
  local msg = select("#", ...) > 0 and fmt:format(...) or fmt
  io.stdout:flush()
  io.stderr:write("vdk: ", msg, "\n")
  return 1
end

-- A failure about a file: make sure the message names it.
function cli.fail_file(filename, msg)
  if not msg:find(filename, 1, true) then msg = filename .. ": " .. msg end
  return cli.fail("%s", msg)
end

-- A usage error: the message, then a hint to the command's --help.
function cli.usage_error(command, msg)
  cli.fail(msg)
  local where = command and ("vdk " .. command .. " --help") or "vdk --help"
  io.stderr:write(("Try '%s' for more information\n"):format(where))
  return 1
end

-- The command module for name, or nil if there is none.
function cli.load_command(name)
  if not name:match("^[%w_-]+$") then return nil end
  for _, known in ipairs(cli.COMMANDS) do
    if known == name then return require("vdk.commands." .. name) end
  end
end

-- The full help text of one command.
function cli.command_help(cmd)
  local text = ("usage: vdk %s\n\n%s\n"):format(cmd.usage, cmd.summary)
  if cmd.help and cmd.help ~= "" then text = text .. "\n" .. cmd.help end
  return text
end

-- The text of `vdk --help`.
function cli.general_help()
  local lines = {
    "usage: vdk [--help | --version] command [command options]",
    "vdk: a disk image tool (raw, qcow2, QED, NBD exports) with a Lua engine",
    "",
    "Commands:",
  }
  for _, name in ipairs(cli.COMMANDS) do
    local cmd = cli.load_command(name)
    lines[#lines + 1] = ("  %-10s %s"):format(name, cmd.summary)
  end
  local formats = table.concat(require("vdk").drivers(), " ")
  lines[#lines + 1] = ""
  lines[#lines + 1] = "Run 'vdk help COMMAND' or 'vdk COMMAND --help' for a command's options."
  lines[#lines + 1] = "Sizes take the suffixes k, M, G, T, P, E (powers of 1024)."
  lines[#lines + 1] = ""
  lines[#lines + 1] = "Supported formats: " .. formats
  return table.concat(lines, "\n") .. "\n"
end

-- Parse a command's options and run it.
function cli.run_command(name, args, first)
  local cmd = cli.load_command(name)
  if not cmd then
    return cli.usage_error(nil, ("Command not found: %s"):format(name))
  end
  if cmd.raw_args then
    return cmd.run(nil, table.move(args, first, #args, 1, {}), args)
  end
  local defs = { HELP_OPTION }
  for _, def in ipairs(cmd.options or {}) do defs[#defs + 1] = def end
  local opts, operands = getopt.parse(args, defs, first)
  if not opts then return cli.usage_error(name, operands) end
  if opts.help then
    io.stdout:write(cli.command_help(cmd))
    return 0
  end
  return cmd.run(opts, operands, args) or 0
end

-- Entry point: returns the exit status.
function cli.main(args)
  args = args or {}
  local first = args[1]
  if first == nil then
    return cli.usage_error(nil, "Not enough arguments")
  elseif first == "-h" or first == "--help" then
    io.stdout:write(cli.general_help())
    return 0
  elseif first == "-V" or first == "--version" then
    io.stdout:write(cli.VERSION_TEXT:format(require("vdk").version))
    return 0
  elseif first:sub(1, 1) == "-" then
    return cli.usage_error(nil, ("unrecognized option '%s'"):format(first))
  end
  return cli.run_command(first, args, 2)
end

return cli
