-- spec/cli_help_spec.lua: `vdk` with no command, --help, --version, help
-- COMMAND, COMMAND --help, and unknown commands.
local U = require "support.util"
local vdk_cmd = U.vdk_cmd

describe("vdk help", function()
  it("--help and help list every command and the formats", function()
    local code, out = vdk_cmd("--help")
    assert.equal(0, code)
    for _, name in ipairs({ "create", "info", "map", "run", "help" }) do
      assert.truthy(out:find("\n  " .. name .. " ", 1, true), name)
    end
    assert.truthy(out:find("Supported formats: [^\n]*raw"))
    local code2, out2 = vdk_cmd("help")
    assert.equal(0, code2)
    assert.equal(out, out2)
    local code3, out3 = vdk_cmd("-h")
    assert.equal(0, code3)
    assert.equal(out, out3)
  end)

  it("help COMMAND equals COMMAND --help", function()
    for _, name in ipairs({ "create", "info", "map", "run", "help" }) do
      local code, out = vdk_cmd("help", name)
      assert.equal(0, code)
      assert.truthy(out:find("^usage: vdk " .. name))
      local code2, out2 = vdk_cmd(name, "--help")
      assert.equal(0, code2)
      assert.equal(out, out2)
    end
  end)

  it("--version prints the version", function()
    local code, out = vdk_cmd("--version")
    assert.equal(0, code)
    assert.truthy(out:match("^vdk version %d+%.%d+%.%d+\n"))
    local _, out2 = vdk_cmd("-V")
    assert.equal(out, out2)
  end)

  it("fails on no command, an unknown command or option", function()
    local cases = {
      { {}, "vdk: Not enough arguments\nTry 'vdk --help' for more information\n" },
      { { "frob" }, "vdk: Command not found: frob\nTry 'vdk --help' for more information\n" },
      { { "--frob" }, "vdk: unrecognized option '--frob'\nTry 'vdk --help' for more information\n" },
      { { "help", "frob" }, "vdk: Command not found: frob\nTry 'vdk --help' for more information\n" },
    }
    for _, case in ipairs(cases) do
      local code, out, err = vdk_cmd(table.unpack(case[1]))
      assert.equal(1, code)
      assert.equal("", out)
      assert.equal(case[2], err)
    end
  end)
end)
