-- spec/cli_create_spec.lua: `vdk create`, option by option, against
-- qemu-img create (same "Formatting" line, images qemu-img accepts).
local U = require "support.util"
local vdk_cmd = U.vdk_cmd

local function qemu_info(path)
  local cjson = U.cjson()
  if not cjson then return nil end
  return cjson.decode(U.must("qemu-img info --output=json -U %s", U.q(path)))
end

-- The Formatting line of a command's output, file name replaced by X.
local function formatting(out, name)
  local line = out:match("Formatting [^\n]*")
  return line and line:gsub("'" .. name:gsub("%p", "%%%0") .. "'", "'X'")
end

describe("vdk create", function()
  it("creates a raw image of the given size (default format raw)", function()
    local dir = U.tmpdir()
    local path = dir .. "/a.img"
    local code, out, err = vdk_cmd("create", path, "64M")
    assert.equal(0, code, err)
    assert.equal("", err)
    assert.equal(("Formatting '%s', fmt=raw size=67108864\n"):format(path), out)
    local q = qemu_info(path)
    if q then
      assert.equal("raw", q.format)
      assert.equal(67108864, q["virtual-size"])
    end
  end)

  it("prints the same Formatting line as qemu-img for raw", function()
    local dir = U.tmpdir()
    for _, args in ipairs({ { "1M" }, { "1.5k" }, { "0x10000" }, { "-o", "preallocation=falloc", "1M" },
                            { "-o", "size=2M" } }) do
      local vdk_path, q_path = dir .. "/v.raw", dir .. "/q.raw"
      local quoted = {}
      for i, a in ipairs(args) do quoted[i] = U.q(a) end
      local code, out = U.run3("%s create -f raw %s %s", U.q(U.vdk), U.q(vdk_path), table.concat(quoted, " "))
      assert.equal(0, code)
      local qout = U.must("qemu-img create -f raw %s %s", U.q(q_path), table.concat(quoted, " "))
      assert.equal(formatting(qout, q_path), formatting(out, vdk_path))
    end
  end)

  it("is quiet with -q", function()
    local dir = U.tmpdir()
    local code, out, err = vdk_cmd("create", "-q", "-f", "raw", dir .. "/q.raw", "1M")
    assert.equal(0, code, err)
    assert.equal("", out)
  end)

  it("accepts options after the operands, attached values and --", function()
    local dir = U.tmpdir()
    local code, out = vdk_cmd("create", dir .. "/a.raw", "1M", "-fraw", "-q")
    assert.equal(0, code)
    assert.equal("", out)
    code = vdk_cmd("create", "-q", "--", dir .. "/b.raw", "2M")
    assert.equal(0, code)
    assert.equal(2 * 1024 * 1024, #U.read_file(dir .. "/b.raw"))
  end)

  it("lists the format's options with -o help", function()
    local code, out = vdk_cmd("create", "-f", "qcow2", "-o", "help")
    assert.equal(0, code)
    assert.truthy(out:find("Supported qcow2 options:", 1, true))
    assert.truthy(out:find("\n  cluster_size=<size>    - qcow2 cluster size\n", 1, true))
    assert.truthy(out:find("lazy_refcounts=<bool (on/off)>", 1, true))
    code, out = vdk_cmd("create", "-f", "raw", "-o", "?")
    assert.equal(0, code)
    assert.truthy(out:find("^Supported raw options:\n"))
    assert.truthy(out:find("\n  size=<size>            - Virtual disk size\n", 1, true))
  end)

  it("fails with exit 1 and one 'vdk:' line on errors", function()
    local dir = U.tmpdir()
    local cases = {
      { { "create", dir .. "/x.raw" }, "Image creation needs a size parameter" },
      { { "create", dir .. "/x.raw", "1Q" }, "Invalid image size specified" },
      { { "create", dir .. "/x.raw", "8E" }, "Must be between 0 and 9223372036854775807" },
      { { "create", "-f", "no-such-format", dir .. "/x", "1M" }, "Unknown file format 'no-such-format'" },
      { { "create", "-o", "bogus=1", dir .. "/x.raw", "1M" }, "bogus" },
      { { "create", "-f", "raw", dir .. "/no/dir/x.raw", "1M" }, "No such file or directory" },
    }
    for _, case in ipairs(cases) do
      local code, _, err = vdk_cmd(table.unpack(case[1]))
      assert.equal(1, code, table.concat(case[1], " "))
      assert.truthy(err:find(case[2], 1, true), err)
      assert.truthy(err:match("^vdk: [^\n]+\n$"), err)
    end
  end)

  it("reports usage errors with a hint to --help", function()
    local dir = U.tmpdir()
    for _, args in ipairs({ { "create" }, { "create", "--bogus", "x", "1M" }, { "create", "-z" },
                            { "create", dir .. "/x", "1M", "2M" }, { "create", "-f" } }) do
      local code, _, err = vdk_cmd(table.unpack(args))
      assert.equal(1, code)
      assert.truthy(err:find("^vdk: "), err)
      assert.truthy(err:find("Try 'vdk create --help' for more information", 1, true), err)
    end
  end)

  it("shows its help with --help and -h", function()
    for _, flag in ipairs({ "--help", "-h" }) do
      local code, out = vdk_cmd("create", flag)
      assert.equal(0, code)
      assert.truthy(out:find("usage: vdk create ", 1, true))
      assert.truthy(out:find("-o OPTIONS", 1, true))
    end
  end)
end)

describe("vdk create qcow2", function()
  it("prints the same Formatting line as qemu-img", function()
    local dir = U.tmpdir()
    U.must("qemu-img create -q -f qcow2 %s/base.qcow2 16M", dir)
    local cases = {  -- { options, size }
      { "", "1G" },
      { "-o cluster_size=4k,lazy_refcounts=on", "1M" },
      { "-o compat=0.10", "100M" },
      { "-o preallocation=metadata,refcount_bits=8", "10M" },
      { "-o compression_type=zstd -o extended_l2=on", "10M" },
      { "-b base.qcow2 -F qcow2", "" },
      { "-u -b missing.qcow2 -F qcow2", "1M" },
    }
    for _, case in ipairs(cases) do
      local opts, size = case[1], case[2]
      local code, out, err = U.run3("cd %s && %s create -f qcow2 %s v.qcow2 %s", U.q(dir), U.q(U.abspath(U.vdk)),
        opts, size)
      local qout = U.must("cd %s && qemu-img create -f qcow2 %s q.qcow2 %s", U.q(dir), opts, size)
      assert.equal(0, code, err)
      assert.equal(formatting(qout, "q.qcow2"), formatting(out, "v.qcow2"), opts)
      if not opts:find("missing", 1, true) then
        local check = U.must("qemu-img check -U %s/v.qcow2", dir)
        assert.truthy(check:find("No errors", 1, true), check)
      end
    end
  end)

  it("creates images whose qemu-img info matches the options", function()
    local dir = U.tmpdir()
    local path = dir .. "/o.qcow2"
    local code, _, err = vdk_cmd("create", "-q", "-f", "qcow2", "-o",
      "cluster_size=4096,lazy_refcounts=on,refcount_bits=16", path, "64M")
    assert.equal(0, code, err)
    local q = qemu_info(path)
    if q then
      assert.equal(4096, q["cluster-size"])
      assert.equal(67108864, q["virtual-size"])
      assert.is_true(q["format-specific"].data["lazy-refcounts"])
    end
  end)

  it("takes the size from the backing file and records -b/-F", function()
    local dir = U.tmpdir()
    U.must("qemu-img create -q -f raw %s/base.raw 3M", dir)
    local code, _, err = vdk_cmd("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw",
      dir .. "/top.qcow2")
    assert.equal(0, code, err)
    local q = qemu_info(dir .. "/top.qcow2")
    if q then
      assert.equal(3 * 1024 * 1024, q["virtual-size"])
      assert.equal("base.raw", q["backing-filename"])
      assert.equal("raw", q["backing-filename-format"])
    end
  end)

  it("requires -F with -b", function()
    local dir = U.tmpdir()
    local code, _, err = vdk_cmd("create", "-f", "qcow2", "-b", "base.qcow2", dir .. "/x.qcow2")
    assert.equal(1, code)
    assert.truthy(err:find("Backing file specified without backing format", 1, true), err)
  end)

  it("fails when the backing file cannot be opened, unless -u", function()
    local dir = U.tmpdir()
    local code, _, err = vdk_cmd("create", "-f", "qcow2", "-b", "missing.qcow2", "-F", "qcow2",
      dir .. "/t.qcow2", "1M")
    assert.equal(1, code)
    assert.truthy(err:find("missing.qcow2", 1, true))
    code = vdk_cmd("create", "-q", "-u", "-f", "qcow2", "-b", "missing.qcow2", "-F", "qcow2",
      dir .. "/t.qcow2", "1M")
    assert.equal(0, code)
  end)
end)
