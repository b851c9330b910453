-- spec/lua_helpers_spec.lua: the pure-Lua helpers behind the CLI:
-- vdk.getopt, vdk.json, vdk.size, vdk.create_options.
local getopt = require "vdk.getopt"
local json = require "vdk.json"
local size = require "vdk.size"
local create_options = require "vdk.create_options"

describe("vdk.getopt", function()
  local DEFS = {
    { short = "f", long = "format", value = true },
    { short = "o", name = "options", value = true, list = true },
    { short = "q" },
    { short = "U", long = "force-share" },
    { long = "output", value = true },
    { long = "backing-chain" },
  }

  it("parses short options, grouped, with attached or separate values", function()
    local opts, ops = getopt.parse({ "-qU", "-fqcow2", "a", "-o", "x=1", "-oy=2", "b" }, DEFS)
    assert.same({ q = true, ["force-share"] = true, format = "qcow2", options = { "x=1", "y=2" } }, opts)
    assert.same({ "a", "b" }, ops)
    opts = getopt.parse({ "-qf", "raw" }, DEFS)
    assert.same({ q = true, format = "raw" }, opts)
  end)

  it("parses long options with = or a separate value, and unique prefixes", function()
    local opts, ops = getopt.parse({ "--output=json", "--format", "raw", "--back", "x" }, DEFS)
    assert.same({ output = "json", format = "raw", ["backing-chain"] = true }, opts)
    assert.same({ "x" }, ops)
    opts = getopt.parse({ "--out", "human", "--output=" }, DEFS)
    assert.equal("", opts.output)
  end)

  it("stops at -- and keeps a lone - as an operand", function()
    local opts, ops = getopt.parse({ "-q", "--", "-f", "--output=x", "-" }, DEFS)
    assert.same({ q = true }, opts)
    assert.same({ "-f", "--output=x", "-" }, ops)
    _, ops = getopt.parse({ "-", "x" }, DEFS)
    assert.same({ "-", "x" }, ops)
  end)

  it("starts at the given index", function()
    local opts, ops = getopt.parse({ "info", "-q", "x" }, DEFS, 2)
    assert.same({ q = true }, opts)
    assert.same({ "x" }, ops)
  end)

  it("reports errors in qemu-img's words", function()
    local cases = {
      { { "--bogus" }, "unrecognized option '--bogus'" },
      { { "-z" }, "unrecognized option '-z'" },
      { { "-qz" }, "unrecognized option '-qz'" },
      { { "-f" }, "missing argument for option '-f'" },
      { { "--output" }, "missing argument for option '--output'" },
      { { "--backing-chain=1" }, "unrecognized option '--backing-chain=1'" },
      { { "--f=raw" }, "unrecognized option '--f=raw'" }, -- ambiguous: --format, --force-share
    }
    for _, case in ipairs(cases) do
      local opts, msg = getopt.parse(case[1], DEFS)
      assert.is_nil(opts)
      assert.equal(case[2], msg)
    end
  end)
end)

describe("vdk.json", function()
  it("prints objects in qemu's key order with 4-space indents", function()
    local text = json.encode({
      ["dirty-flag"] = false, format = "qcow2", filename = "a", ["virtual-size"] = 1,
      ["format-specific"] = { type = "qcow2", data = { ["refcount-bits"] = 16, compat = "1.1" } },
    })
    assert.equal([[
{
    "virtual-size": 1,
    "filename": "a",
    "format": "qcow2",
    "format-specific": {
        "type": "qcow2",
        "data": {
            "compat": "1.1",
            "refcount-bits": 16
        }
    },
    "dirty-flag": false
}]], text)
  end)

  it("orders qemu-img info's keys as qemu-img does", function()
    local keys = json.qemu_order({ "dirty-flag", "backing-filename", "full-backing-filename",
      "format-specific", "actual-size", "format", "cluster-size", "filename", "virtual-size",
      "backing-filename-format" })
    assert.same({ "backing-filename-format", "virtual-size", "filename", "cluster-size", "format",
      "actual-size", "format-specific", "full-backing-filename", "backing-filename", "dirty-flag" }, keys)
    keys = json.qemu_order({ "extended-l2", "corrupt", "refcount-bits", "lazy-refcounts",
      "compression-type", "compat" })
    assert.same({ "compat", "compression-type", "lazy-refcounts", "refcount-bits", "corrupt",
      "extended-l2" }, keys)
  end)

  it("prints arrays, empty containers, numbers and null", function()
    assert.equal("[\n    1,\n    2\n]", json.encode({ 1, 2 }))
    assert.equal("[\n]", json.encode(json.array({})))
    assert.equal("{\n}", json.encode({}))
    assert.equal("-5", json.encode(-5))
    assert.equal("0.5", json.encode(0.5))
    assert.equal("null", json.encode(json.null))
    assert.equal("true", json.encode(true))
  end)

  it("escapes strings as qemu does", function()
    assert.equal([["a\"b\\c\n\t\r\b\f"]], json.encode("a\"b\\c\n\t\r\b\f"))
    assert.equal([["\u0001\u007F/"]], json.encode("\1\127/"))
    assert.equal([["\u00E9\u20AC"]], json.encode("é€"))
    assert.equal([["\uD83D\uDE00"]], json.encode("\xF0\x9F\x98\x80"))
    assert.equal([["\uFFFDx"]], json.encode("\xFFx"))
  end)

  it("refuses what JSON cannot hold", function()
    assert.has_error(function() json.encode({ [true] = 1 }) end)
    assert.has_error(function() json.encode(print) end)
  end)
end)

describe("vdk.size", function()
  it("parses like qemu-img", function()
    local ok = {
      ["0"] = 0, ["512"] = 512, ["1k"] = 1024, ["1K"] = 1024, ["1b"] = 1, ["1M"] = 1048576,
      ["2G"] = 2147483648, ["1T"] = 1 << 40, ["1P"] = 1 << 50, ["7E"] = 7 << 60,
      ["1.5k"] = 1536, ["1.25k"] = 1280, ["1.00001M"] = 1048586, ["1."] = 1, ["1.0"] = 1,
      ["0x10"] = 16, ["0X10"] = 16, ["0x10k"] = 16384, ["+5"] = 5, [" 1M"] = 1048576,
      ["010"] = 10, ["9223372036854775807"] = math.maxinteger,
    }
    for text, n in pairs(ok) do assert.equal(n, size.parse(text), text) end
    for _, text in ipairs({ "", "x", "1Q", "1.5", "1.5b", ".5k", "-5", "1M ", "1 M", "1e3",
                            "1kib", "8E", "9223372036854775808", "0x8000000000000000", "0x1.8k" }) do
      assert.is_nil(size.parse(text), text)
    end
    assert.equal(7, size.parse(7))
    assert.is_nil(size.parse(-1))
    assert.is_nil(size.parse({}))
  end)

  it("prints like qemu-img's size_to_str", function()
    local cases = {
      [0] = "0 B", [1] = "1 B", [999] = "999 B", [1000] = "0.977 KiB", [1024] = "1 KiB",
      [1536] = "1.5 KiB", [200704] = "196 KiB", [67108864] = "64 MiB",
      [10737418240] = "10 GiB", [math.maxinteger] = "8 EiB",
    }
    for n, text in pairs(cases) do assert.equal(text, size.human(n), tostring(n)) end
  end)
end)

describe("vdk.create_options", function()
  it("splits -o text, with ,, for a comma and bare names meaning on", function()
    assert.same({ { "a", "1" }, { "b", "x,y" }, { "lazy_refcounts", "on" }, { "c", "" } },
      create_options.parse("a=1,b=x,,y,lazy_refcounts,c="))
    assert.same({}, create_options.parse(""))
  end)

  it("describes options in qemu-img's order with its defaults", function()
    assert.equal("size=1048576", create_options.describe("raw", { size = "1048576" }))
    assert.equal("cluster_size=65536 extended_l2=off compression_type=zlib size=1048576 "
      .. "compat=1.1 backing_file=b.qcow2 backing_fmt=qcow2 lazy_refcounts=on refcount_bits=16",
      create_options.describe("qcow2", { size = "1048576", compat = "1.1", backing_file = "b.qcow2",
        backing_fmt = "qcow2", lazy_refcounts = "on" }))
    assert.equal("size=1 zzz=a,,b", create_options.describe("raw", { size = "1", zzz = "a,b" }))
  end)

  it("lists a format's options sorted by name", function()
    local text = create_options.help("qcow2")
    assert.truthy(text:find("^Supported qcow2 options:\n  backing_file=<str>     %- File name of a base image\n"))
    assert.truthy(text:find("\n  size=<size>            %- Virtual disk size\n$"))
  end)
end)
