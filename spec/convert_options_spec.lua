-- spec/convert_options_spec.lua: vdk convert's options, each checked with
-- qemu-img as the oracle: -B, -n, --target-is-zero, -S 0, -c (zlib, zstd),
-- several sources, -W, -m, -r, cache modes, progress and JSON output, and
-- the option errors (qemu-img's messages).
local U = require "support.util"
local X = require "support.copy_util"

local dir = U.tmpdir()
local SRC = X.mixed_raw(dir .. "/src.raw", "8M")
local QSRC = X.mixed_qcow2(dir .. "/src.qcow2", "8M")

local n = 0
local function out(ext)
  n = n + 1
  return ("%s/o%d.%s"):format(dir, n, ext)
end

local function ok_convert(...)
  local code, so, se = X.vdk("convert", "-q", ...)
  assert.equal(0, code, so .. se)
  assert.equal("", so .. se)
end

local function no_temp_files()
  for _, name in ipairs(X.listdir(dir)) do
    assert.is_nil(name:find("%.vdk%-"), "temporary file left: " .. name)
  end
end

-- qemu-img map --output=json as a list of extents.
local function map(path)
  return U.cjson().decode(U.must("qemu-img map --output=json %s", U.q(path)))
end

describe("vdk convert -B", function()
  it("leaves what the source takes from the same backing file unallocated", function()
    local base = X.mixed_raw(dir .. "/base.raw", "8M")
    local top = dir .. "/top.qcow2"
    X.sh("qemu-img create -q -f qcow2 -b base.raw -F raw %s", U.q(top))
    X.sh("qemu-io -c 'write -P 0x77 3M 128k' %s", U.q(top))
    local dst = out("qcow2")
    ok_convert("-O", "qcow2", "-B", "base.raw", "-F", "raw", top, dst)
    X.assert_same(top, dst)
    X.assert_clean(dst)
    assert.truthy(U.must("qemu-img info %s", U.q(dst)):find("backing file: base.raw", 1, true))
    for _, e in ipairs(map(dst)) do
      if e.depth == 0 and e.present then
        assert.truthy(e.start >= 3 << 20 and e.start + e.length <= (3 << 20) + (128 << 10),
          ("allocated at %d+%d"):format(e.start, e.length))
      end
    end
  end)

  it("keeps unallocated what reads the same in an unrelated backing file", function()
    local flat = dir .. "/flat.raw"
    X.sh("cp %s %s", U.q(SRC), U.q(flat))
    X.sh("qemu-io -f raw -c 'write -P 0x99 6M 64k' %s", U.q(flat))
    local dst = out("qcow2")
    ok_convert("-O", "qcow2", "-B", SRC, "-F", "raw", flat, dst)
    X.assert_same(flat, dst)
    X.assert_clean(dst)
    assert.equal(1, X.allocated_clusters(dst))
  end)

  it("refuses a raw target and a missing backing format, as qemu-img", function()
    local code, _, err = X.vdk("convert", "-B", SRC, "-F", "raw", SRC, out("raw"))
    assert.equal(1, code)
    assert.truthy(err:find("Backing file not supported for file format 'raw'", 1, true))
    code, _, err = X.vdk("convert", "-O", "qcow2", "-B", SRC, SRC, out("qcow2"))
    assert.equal(1, code)
    assert.truthy(err:find("Use of backing file requires explicit backing format", 1, true))
  end)
end)

describe("vdk convert -n", function()
  it("writes into an existing image, zeroing what the source has as zeros", function()
    local dst = out("qcow2")
    X.sh("qemu-img create -q -f qcow2 %s 8M", U.q(dst))
    X.sh("qemu-io -c 'write -P 0xee 0 8M' %s", U.q(dst))
    ok_convert("-n", QSRC, dst)  -- no -O: the target's format is probed
    X.assert_same(QSRC, dst)
    X.assert_clean(dst)
  end)

  it("never replaces an existing target without -n", function()
    local dst = out("raw")
    U.write_file(dst, "precious")
    local code, _, err = X.vdk("convert", SRC, dst)
    assert.equal(1, code)
    assert.truthy(err:find("already exists; use -n", 1, true), err)
    assert.equal("precious", U.read_file(dst))
    no_temp_files()
  end)

  it("refuses a target smaller than the sources", function()
    local dst = out("raw")
    X.sh("qemu-img create -q -f raw %s 1M", U.q(dst))
    local code, _, err = X.vdk("convert", "-n", SRC, dst)
    assert.equal(1, code)
    assert.equal("vdk: output file is smaller than input file\n", err)
  end)

  it("with --target-is-zero does not write the zero ranges", function()
    local dst, ref = out("qcow2"), out("qcow2")
    X.sh("qemu-img create -q -f qcow2 %s 8M", U.q(dst))
    X.sh("qemu-img create -q -f qcow2 %s 8M", U.q(ref))
    ok_convert("-n", "--target-is-zero", "-O", "qcow2", QSRC, dst)
    ok_convert("-n", "-O", "qcow2", QSRC, ref)
    X.assert_same(QSRC, dst)
    local function zero_clusters(path)
      local bytes = 0
      for _, e in ipairs(map(path)) do
        if e.present and e.zero and not e.data then bytes = bytes + e.length end
      end
      return bytes
    end
    assert.equal(0, zero_clusters(dst))
    assert.truthy(zero_clusters(ref) > 0)
  end)

  it("--target-is-zero needs -n and no backing file, as qemu-img", function()
    local code, _, err = X.vdk("convert", "--target-is-zero", SRC, out("raw"))
    assert.equal(1, code)
    assert.truthy(err:find("--target-is-zero requires use of -n flag", 1, true))
    code, _, err = X.vdk("convert", "-n", "--target-is-zero", "-O", "qcow2", "-B", SRC, "-F",
                         "raw", SRC, QSRC)
    assert.equal(1, code)
    assert.truthy(err:find("Cannot use --target-is-zero when the destination image has a "
                           .. "backing file", 1, true))
  end)
end)

describe("vdk convert -S", function()
  it("-S 0 writes everything: fully allocated targets", function()
    local raw, q = out("raw"), out("qcow2")
    ok_convert("-S", "0", QSRC, raw)
    ok_convert("-S", "0", "-O", "qcow2", SRC, q)
    X.assert_same(QSRC, raw)
    X.assert_same(SRC, q)
    local m = map(raw)
    assert.equal(1, #m)
    assert.is_true(m[1].data)
    assert.equal(128, X.allocated_clusters(q)) -- 8 MiB of 64 KiB clusters
  end)

  it("a larger -S leaves only whole aligned zero blocks as holes", function()
    local dst = out("raw")
    ok_convert("-S", "1M", SRC, dst)
    X.assert_same(SRC, dst)
    X.assert_holes_kept(SRC, dst, 1 << 20)
  end)

  it("rejects sizes qemu-img rejects", function()
    for _, s in ipairs({ "1000", "3x", "32M" }) do
      local code, _, err = X.vdk("convert", "-S", s, SRC, out("raw"))
      assert.equal(1, code)
      assert.truthy(err:find("Invalid buffer size for sparse output specified", 1, true), err)
    end
  end)
end)

describe("vdk convert -c", function()
  for _, ctype in ipairs({ "zlib", "zstd" }) do
    it("compresses with " .. ctype .. ", clusters packed like qemu-img's", function()
      local dst, ref = out("qcow2"), out("qcow2")
      ok_convert("-c", "-O", "qcow2", "-o", "compression_type=" .. ctype, SRC, dst)
      X.sh("qemu-img convert -c -O qcow2 -o compression_type=%s %s %s", ctype, U.q(SRC), U.q(ref))
      X.assert_same(SRC, dst)
      X.assert_clean(dst)
      local check = U.must("qemu-img check %s", U.q(dst))
      assert.truthy(check:find("compressed clusters"), check)
      assert.is_nil(check:find(" 0.00%% compressed clusters"), check)
      local info = U.must("qemu-img info %s", U.q(dst))
      assert.truthy(info:find("compression type: " .. ctype, 1, true), info)
      -- Packed: no larger than qemu-img's output plus a cluster.
      local size = U.must("stat -c %%s %s", U.q(dst))
      local rsize = U.must("stat -c %%s %s", U.q(ref))
      assert.truthy(tonumber(size) <= tonumber(rsize) + 65536, size .. " vs " .. rsize)
    end)
  end

  it("compresses with -W too, and from a compressed source", function()
    local dst, raw = out("qcow2"), out("raw")
    ok_convert("-c", "-W", "-m", "16", "-O", "qcow2", QSRC, dst)
    X.assert_same(QSRC, dst)
    X.assert_clean(dst)
    ok_convert(dst, raw)
    X.assert_same(QSRC, raw)
  end)

  it("refuses raw targets and preallocation, as qemu-img", function()
    local code, _, err = X.vdk("convert", "-c", SRC, out("raw"))
    assert.equal(1, code)
    assert.truthy(err:find("Compression not supported for this file format", 1, true))
    code, _, err = X.vdk("convert", "-c", "-O", "qcow2", "-o", "preallocation=full", SRC,
                         out("qcow2"))
    assert.equal(1, code)
    assert.truthy(err:find("Compression and preallocation not supported at the same time", 1, true))
  end)
end)

describe("vdk convert with several sources", function()
  it("concatenates them, as qemu-img convert does", function()
    local odd = dir .. "/odd.raw"
    X.sh("qemu-img create -q -f raw %s 1000000", U.q(odd))
    X.sh("qemu-io -f raw -c 'write -P 0x21 999000 1000' %s", U.q(odd))
    local dst, ref = out("qcow2"), out("qcow2")
    ok_convert("-O", "qcow2", SRC, odd, QSRC, dst)
    X.sh("qemu-img convert -O qcow2 %s %s %s %s", U.q(SRC), U.q(odd), U.q(QSRC), U.q(ref))
    X.assert_same(ref, dst)
    X.assert_clean(dst)
  end)
end)

describe("vdk convert scheduling and cache options", function()
  local cases = {
    { "-W" }, { "-m", "1" }, { "-m", "64" }, { "-m", "16", "-W" }, { "-r", "512M" },
    { "-t", "none" }, { "-t", "writethrough" }, { "-t", "directsync" }, { "-t", "unsafe" },
    { "-T", "none" }, { "-U" }, { "-C" },
  }
  for _, args in ipairs(cases) do
    it(table.concat(args, " "), function()
      local dst = out("qcow2")
      local all = { "-O", "qcow2" }
      for _, a in ipairs(args) do all[#all + 1] = a end
      all[#all + 1] = QSRC
      all[#all + 1] = dst
      ok_convert(table.unpack(all))
      X.assert_same(QSRC, dst)
      X.assert_clean(dst)
    end)
  end

  it("rejects bad values with qemu-img's messages", function()
    local bad = {
      { { "-t", "bogus" }, "Invalid cache option: bogus" },
      { { "-T", "bogus" }, "Invalid source cache option: bogus" },
      { { "-m", "0" }, "Invalid number of requests in flight" },
      { { "-m", "65" }, "Invalid number of requests in flight" },
      { { "-r", "1x" }, "Invalid rate limit specified" },
      { { "-O", "foo" }, "Unknown file format 'foo'" },
      { { "-n", "-o", "cluster_size=4k" }, "-o has no effect when skipping image creation" },
      { { "-l", "snap" }, "internal snapshot" },
      { { "--output=xml" }, "--output must be used with human or json as argument." },
    }
    for _, case in ipairs(bad) do
      local args = { "convert" }
      for _, a in ipairs(case[1]) do args[#args + 1] = a end
      args[#args + 1] = SRC
      args[#args + 1] = out("raw")
      local code, so, se = X.vdk(table.unpack(args))
      assert.equal(1, code, table.concat(case[1], " "))
      assert.equal("", so)
      assert.truthy(se:find(case[2], 1, true), se)
    end
    local code, _, err = X.vdk("convert", SRC)
    assert.equal(1, code)
    assert.truthy(err:find("Must specify image file name", 1, true))
    no_temp_files()
  end)
end)

describe("vdk convert output", function()
  it("prints a one-line summary, nothing with -q", function()
    local dst = out("raw")
    local code, so, se = X.vdk("convert", SRC, dst)
    assert.equal(0, code, se)
    assert.truthy(so:match("^Converted '.-src.raw' to '.-' %(raw%): 8 MiB in [%d.]+ s %(.-/s%); "
                           .. ".- written, .- zero or unallocated\n$"), so)
  end)

  it("prints qemu-img's percentages with -p when not on a terminal", function()
    local code, so = X.vdk("convert", "-p", "-q", SRC, out("raw"))
    assert.equal(0, code)
    assert.truthy(so:find("(100.00/100%)", 1, true), so)
  end)

  it("prints JSON with --output=json", function()
    local dst = out("qcow2")
    local code, so, se = X.vdk("convert", "--output=json", "-O", "qcow2", SRC, dst)
    assert.equal(0, code, se)
    local t = U.cjson().decode(so)
    assert.equal(8 << 20, t["virtual-size"])
    assert.equal(dst, t.target)
    assert.equal("qcow2", t.format)
    assert.equal(SRC, t.sources[1])
    assert.equal("writeback", t.cache)
    assert.is_true(t.flushed)
    assert.equal(8 << 20, t["bytes-written"] + t["bytes-skipped"] + t["bytes-zeroed"])
    assert.truthy(t["bytes-read"] >= t["bytes-written"])
  end)

  it("writes JSON progress lines to --progress-fd", function()
    local dst, log = out("raw"), dir .. "/progress.log"
    local cmd = ("%s convert -q --progress-fd=3 %s %s 3>%s"):format(U.q(U.vdk), U.q(SRC),
      U.q(dst), U.q(log))
    local ok, text = U.run(cmd)
    assert.is_true(ok, text)
    local last
    for line in io.lines(log) do
      last = U.cjson().decode(line)
      assert.equal(8 << 20, last.total)
      assert.truthy(last.done and last.rate and last.phase and last.elapsed)
    end
    assert.equal("done", last.phase)
    assert.equal(8 << 20, last.done)
  end)
end)
