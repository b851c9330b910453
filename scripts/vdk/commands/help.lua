-- vdk help [COMMAND]: the general help, or one command's help.
local cli = require "vdk.cli"

return {
  name = "help",
  summary = "show the help of vdk or of one command",
  usage = "help [COMMAND]",
  help = "'vdk help COMMAND' prints the same text as 'vdk COMMAND --help'.\n",
  options = {},
  run = function(_, operands)
    if #operands == 0 then
      io.stdout:write(cli.general_help())
      return 0
    end
    if #operands > 1 then
      return cli.usage_error("help", ("Unexpected argument: %s"):format(operands[2]))
    end
    local cmd = cli.load_command(operands[1])
    if not cmd then
      return cli.usage_error(nil, ("Command not found: %s"):format(operands[1]))
    end
    io.stdout:write(cli.command_help(cmd))
    return 0
  end,
}
