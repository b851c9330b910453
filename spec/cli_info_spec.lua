-- spec/cli_info_spec.lua: `vdk info`, option by option. The field-by-field
-- comparison with qemu-img over many kinds of image is in
-- cli_qemu_compat_spec.lua.
local U = require "support.util"
local vdk_cmd = U.vdk_cmd

describe("vdk info", function()
  local dir, raw
  setup(function()
    dir = U.tmpdir()
    raw = dir .. "/r.raw"
    U.must("qemu-img create -q -f raw %s 64M", U.q(raw))
    U.must("qemu-io -f raw -c 'write -P 7 1M 64k' %s", U.q(raw))
  end)

  it("prints qemu-img's human output", function()
    local code, out, err = vdk_cmd("info", raw)
    assert.equal(0, code, err)
    assert.equal(U.must("qemu-img info %s", U.q(raw)), out)
    assert.truthy(out:find("virtual size: 64 MiB (67108864 bytes)", 1, true))
  end)

  it("prints qemu-img's JSON with --output=json and --output json", function()
    local expected = U.must("qemu-img info --output=json %s", U.q(raw))
    for _, args in ipairs({ { "--output=json", raw }, { "--output", "json", raw },
                            { raw, "--out=json" }, { "-f", "raw", "--output=json", raw },
                            { "-U", "--output=json", raw }, { "--force-share", "--output=json", raw } }) do
      local code, out, err = vdk_cmd("info", table.unpack(args))
      assert.equal(0, code, err)
      assert.equal(expected, out)
    end
  end)

  it("--output=human is the default", function()
    local _, a = vdk_cmd("info", raw)
    local _, b = vdk_cmd("info", "--output=human", raw)
    assert.equal(a, b)
  end)

  it("--backing-chain prints a list (one entry for a single image)", function()
    local code, out = vdk_cmd("info", "--backing-chain", "--output=json", raw)
    assert.equal(0, code)
    assert.equal(U.must("qemu-img info --backing-chain --output=json %s", U.q(raw)), out)
    code, out = vdk_cmd("info", "--backing-chain", raw)
    assert.equal(0, code)
    assert.equal(U.must("qemu-img info --backing-chain %s", U.q(raw)), out)
  end)

  it("fails for a missing file, naming it", function()
    local code, out, err = vdk_cmd("info", dir .. "/missing.img")
    assert.equal(1, code)
    assert.equal("", out)
    assert.truthy(err:match("^vdk: [^\n]*missing%.img[^\n]*No such file or directory\n$"), err)
  end)

  it("fails for a wrong -f", function()
    local code, _, err = vdk_cmd("info", "-f", "no-such-format", raw)
    assert.equal(1, code)
    assert.truthy(err:find("no-such-format", 1, true))
  end)

  it("rejects a bad --output value", function()
    local code, _, err = vdk_cmd("info", "--output=xml", raw)
    assert.equal(1, code)
    assert.equal("vdk: --output must be used with human or json as argument.\n", err)
  end)

  it("reports usage errors with a hint", function()
    for _, args in ipairs({ { "info" }, { "info", raw, raw }, { "info", "--bogus", raw },
                            { "info", "-z", raw }, { "info", "--output" },
                            { "info", "--backing-chain=yes", raw } }) do
      local code, out, err = vdk_cmd(table.unpack(args))
      assert.equal(1, code)
      assert.equal("", out)
      assert.truthy(err:find("^vdk: [^\n]+\nTry 'vdk info %-%-help' for more information\n$"), err)
    end
  end)

  it("shows its help", function()
    local code, out = vdk_cmd("info", "--help")
    assert.equal(0, code)
    assert.truthy(out:find("usage: vdk info [-f fmt] [--output=human|json] [--backing-chain] [-U] filename", 1, true))
    assert.truthy(out:find("--backing-chain", 1, true))
  end)
end)
