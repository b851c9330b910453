-- spec/cli_map_spec.lua: `vdk map`, option by option, against qemu-img map.
-- The comparison over many kinds of image is in cli_qemu_compat_spec.lua.
local U = require "support.util"
local vdk_cmd = U.vdk_cmd

describe("vdk map", function()
  local dir, raw
  setup(function()
    dir = U.tmpdir()
    raw = dir .. "/r.raw"
    U.must("qemu-img create -q -f raw %s 16M", U.q(raw))
    U.must("qemu-io -f raw -c 'write -P 1 1M 64k' -c 'write -P 2 4M 8k' %s", U.q(raw))
  end)

  -- vdk map and qemu-img map with the same options print the same.
  local function same_as_qemu(...)
    local args = { ... }
    local quoted = {}
    for i, a in ipairs(args) do quoted[i] = U.q(a) end
    local expected = U.must("qemu-img map %s %s", table.concat(quoted, " "), U.q(raw))
    args[#args + 1] = raw
    local code, out, err = vdk_cmd("map", table.unpack(args))
    assert.equal(0, code, err)
    assert.equal(expected, out)
  end

  it("prints qemu-img's human table", function()
    same_as_qemu()
    same_as_qemu("--output=human")
  end)

  it("prints qemu-img's JSON", function()
    same_as_qemu("--output=json")
    same_as_qemu("--output", "json", "-f", "raw")
    same_as_qemu("--output=json", "-U")
  end)

  it("honours --start-offset and --max-length, with suffixes", function()
    same_as_qemu("--output=json", "--start-offset=1M")
    same_as_qemu("--output=json", "--start-offset=1028k", "--max-length=3M")
    same_as_qemu("--output=json", "--max-length=0x1000")
    same_as_qemu("--start-offset=1M", "--max-length=32k")
    same_as_qemu("--output=json", "--start-offset", "4100k")
  end)

  it("prints one empty entry past the end, as qemu-img", function()
    same_as_qemu("--output=json", "--start-offset=100M")
    same_as_qemu("--output=json", "--max-length=0")
    same_as_qemu("--start-offset=100M")
  end)

  it("rejects bad offsets and lengths", function()
    for _, args in ipairs({ { "--start-offset=abc" }, { "--max-length=-1" }, { "--start-offset=1Q" } }) do
      args[#args + 1] = raw
      local code, out, err = vdk_cmd("map", table.unpack(args))
      assert.equal(1, code)
      assert.equal("", out)
      assert.truthy(err:find("^vdk: Invalid [^\n]+ specified"), err)
    end
  end)

  it("fails for a missing file and a bad --output", function()
    local code, _, err = vdk_cmd("map", dir .. "/missing")
    assert.equal(1, code)
    assert.truthy(err:find("missing", 1, true))
    code, _, err = vdk_cmd("map", "--output=yaml", raw)
    assert.equal(1, code)
    assert.equal("vdk: --output must be used with human or json as argument.\n", err)
  end)

  it("reports usage errors with a hint", function()
    for _, args in ipairs({ { "map" }, { "map", raw, raw }, { "map", "--start", raw },
                            { "map", "-x", raw } }) do
      local code, _, err = vdk_cmd(table.unpack(args))
      assert.equal(1, code)
      assert.truthy(err:find("Try 'vdk map --help' for more information", 1, true), err)
    end
  end)

  it("shows its help", function()
    local code, out = vdk_cmd("help", "map")
    assert.equal(0, code)
    assert.truthy(out:find("--start-offset=OFFSET", 1, true))
    local code2, out2 = vdk_cmd("map", "--help")
    assert.equal(0, code2)
    assert.equal(out, out2)
  end)
end)
